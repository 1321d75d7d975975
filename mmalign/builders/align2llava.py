"""Align²LLaVA curation: reward-model pairs from scene graphs, scoring, cascaded selection, rewriting.

Align²LLaVA (https://arxiv.org/abs/2409.18541; no public code) trains a question reward model
``f_Q(I, Q)`` and an answer reward model ``g_A(I, Q, A)`` (Bradley–Terry, from expert preferences),
keeps the best questions by f_Q, then the best answers by g_A, and lets the MLLM's inner LLM
rewrite what it keeps into its own style, checking that the meaning is preserved.

Here:

* :func:`scene_rm_pairs` derives the preference annotations from exact ShapeWorld scene graphs:
  f_Q — a grounded question (about present objects) over an ungrounded one (presupposing an absent
  object or a wrong attribute); g_A — the exact answer over a flawed one (a POVID-style injection).
  They are POVID-format pair records, so ``train/reward.py`` trains both models unchanged (the
  question is the "response" of f_Q to :data:`QUESTION_PROMPT`).
* :func:`score_records` reads a reward at the last token of ``[image | prompt | response]``
  (:class:`mmalign.preference.reward_model.RewardModel`).
* :func:`cascade_select` keeps ``question_keep`` of the corpus by f_Q, then, of those, the best by
  g_A until ``keep`` of the corpus remains.
* :func:`meaning_preserved` rejects a rewrite whose objects, attributes, numbers, positions,
  yes/no or negation differ from the original's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmalign.builders.povid_rules import CooccurrenceStats, injections
from mmalign.builders.scene import COLOR_WORDS, scene_from_record
from mmalign.data.check import check_record
from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor
from mmalign.preference.batch import EncodedPair, collate_shared, response_tokens
from mmalign.preference.reward_model import RewardModel
from mmalign.shapeworld.captions import article, plural
from mmalign.shapeworld.parsing import NUMBER_FORMS, SHAPE_FORMS, SIZE_FORMS, tokenize
from mmalign.shapeworld.qa import image_qa
from mmalign.shapeworld.world import Scene, WorldConfig

QUESTION_PROMPT = "Ask a question about this image."
"""The prompt f_Q's "response" (the question) answers."""
POSITION_WORDS = frozenset("left right top bottom center centre middle above below next".split())
NEGATION_WORDS = frozenset("no not none nothing without isn't aren't".split())


def _pair(rid: str, image: str, prompt: str, chosen: str, rejected: str, kind: str) -> dict[str, Any]:
    human = {"from": "human", "value": f"<image>\n{prompt}"}
    return {
        "id": rid,
        "image": image,
        "conversations": [human, {"from": "gpt", "value": chosen}],
        "rejected_conversations": [human, {"from": "gpt", "value": rejected}],
        "task": kind,
    }


def scene_rm_pairs(
    scene: Scene, image: str, cfg: WorldConfig, stats: CooccurrenceStats, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(f_Q pairs, g_A pairs)`` for one ShapeWorld scene (exact: the noisy annotation is not used).

    f_Q: each grounded question of the scene's QA (existence and count excepted: asking about an
    absent shape is legitimate) over the same question about an absent shape (:func:`ungrounded`), so
    the two differ only in grounding, not in template. g_A: each exact answer over an injected one.
    """
    rng = random.Random(f"{seed}:a2l:{scene.id}")
    clean = Scene(scene.id, scene.objects, scene.background, [])
    desc = scene_from_record({**clean.to_dict(), "image": image}, scene.id, cfg.image_size)
    absent = [s for s in cfg.shapes if s not in desc.names()]
    fq, ga = [], []
    items = [q for q in image_qa(clean, cfg, rng) if q["type"] != "multiple_choice"]
    for k, item in enumerate(items):
        legit = item["type"] in ("existence", "count")  # asking about an absent shape is fine there
        bad = None if legit else ungrounded(item["question"], desc.names(), absent, rng)
        if bad is not None:
            fq.append(_pair(f"{scene.id}-fq{k}", image, QUESTION_PROMPT, item["question"], bad, "question"))
        flawed = injections(item["answer"], desc, stats, rng)
        if flawed:
            wrong = rng.choice(flawed)
            ga.append(
                _pair(f"{scene.id}-ga{k}", image, item["question"], item["answer"], wrong.text, wrong.kind)
            )
    # Only pairs the trainers accept (e.g. no injection that leaves the answer unchanged).
    return [p for p in fq if check_record(p, "povid", p["id"]) is None], [
        p for p in ga if check_record(p, "povid", p["id"]) is None
    ]


def ungrounded(question: str, present: set[str], absent: Sequence[str], rng: random.Random) -> str | None:
    """The question with its first present shape (singular or plural) replaced by an absent one."""
    words = question.split(" ")
    for i, w in enumerate(words):
        core = w.rstrip("?.,")
        shape = SHAPE_FORMS.get(core)
        if shape in present and absent:
            new = rng.choice(list(absent))
            new = plural(new) if core != shape else new
            words[i] = new + w[len(core) :]
            if i > 0 and words[i - 1] in ("a", "an"):
                words[i - 1] = article(new)
            return " ".join(words)
    return None


@dataclass
class Scored:
    """A corpus record with its question and answer rewards."""

    index: int
    q_score: float
    a_score: float


def encode_one(processor: MultimodalProcessor, ex: Example, response: str) -> EncodedPair:
    """One prompt (messages ending with the user turn, media loaded) and one response, for scoring."""
    n_img, n_vid = len(ex.images), len(ex.videos)
    prompt_ids = processor.tokenize_prompt(ex.messages, n_img, n_vid, ex.id)
    ids, mask = response_tokens(processor, ex.messages, prompt_ids, response, n_img, n_vid, ex.id)
    images, videos = processor.load_media(ex)
    return EncodedPair(ex.id, prompt_ids, [ids], [mask], images, videos)


@torch.no_grad()
def rewards(
    model: RewardModel, processor: MultimodalProcessor, encoded: Sequence[EncodedPair], batch_size: int = 64
) -> list[float]:
    """Reward of each encoded ``(prompt, response)``: the head on the response's last token."""
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.head.parameters()).dtype
    out: list[float] = []
    for start in range(0, len(encoded), batch_size):
        batch = collate_shared(list(encoded[start : start + batch_size]), processor.pad_token_id).to(
            device, dtype
        )
        out += model(batch)[:, 0].tolist()
    return out


def cascade_select(scored: Sequence[Scored], keep: float = 0.1, question_keep: float = 0.3) -> list[int]:
    """Indices kept: the top ``question_keep`` by f_Q, then of those the top by g_A until ``keep`` remains.

    Ties break by index (stable). Returns indices in corpus order.
    """
    if not 0 < keep <= question_keep <= 1:
        raise ValueError(f"need 0 < keep ≤ question_keep ≤ 1, got {keep}, {question_keep}")
    n = len(scored)
    n_q = max(1, round(n * question_keep)) if n else 0
    n_keep = max(1, round(n * keep)) if n else 0
    by_q = sorted(scored, key=lambda s: (-s.q_score, s.index))[:n_q]
    by_a = sorted(by_q, key=lambda s: (-s.a_score, s.index))[:n_keep]
    return sorted(s.index for s in by_a)


def content_signature(text: str) -> dict[str, frozenset[str]]:
    """What a rewrite must keep: objects, colours, sizes, numbers, positions, yes/no, negation."""
    toks = tokenize(text)
    return {
        "objects": frozenset(SHAPE_FORMS[t] for t in toks if t in SHAPE_FORMS),
        "colors": frozenset(t for t in toks if t in COLOR_WORDS),
        "sizes": frozenset(SIZE_FORMS[t] for t in toks if t in SIZE_FORMS),
        "numbers": frozenset(
            str(NUMBER_FORMS.get(t, t))
            for t in toks
            if t.isdigit() or (t in NUMBER_FORMS and t not in ("a", "an"))
        ),
        "positions": frozenset(t for t in toks if t in POSITION_WORDS),
        "yes_no": frozenset(t for t in toks[:1] if t in ("yes", "no")),
        "negation": frozenset({"neg"}) if any(t in NEGATION_WORDS for t in toks) else frozenset(),
    }


def meaning_preserved(original: str, rewrite: str) -> tuple[bool, str]:
    """``(ok, reason)``: ok when the rewrite is non-empty and keeps :func:`content_signature`."""
    if not rewrite.strip():
        return False, "empty rewrite"
    a, b = content_signature(original), content_signature(rewrite)
    diffs = []
    for key in a:
        if a[key] != b[key]:
            added, lost = sorted(b[key] - a[key]), sorted(a[key] - b[key])
            diffs.append(f"{key} changed (+{added} -{lost})")
    return (not diffs), "; ".join(diffs)


def llava_prompt(rec: dict[str, Any], root: Path, where: str) -> tuple[Example, str, str]:
    """``(prompt example, question text, answer)`` of a single-turn LLaVA record."""
    from mmalign.builders.povid import split_conversation

    prefix, answer = split_conversation(rec, where)
    question = prefix[-1]["value"]
    messages = [{"role": "user", "content": question}]
    images = [root / rec["image"]] if rec.get("image") else []
    return (
        Example(str(rec.get("id", where)), messages, images),
        question.replace("<image>", "").strip(),
        answer,
    )
