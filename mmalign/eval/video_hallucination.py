"""Video hallucination of a ShapeWorld model, judged exactly against the clips' scene graphs.

What i-SRT must lower and must not break (the issue "i-SRT", its ShapeWorld proof), on held-out
clips (the test split and ``prior/test_video.jsonl``), greedy decoding:

* **descriptions** ("Describe the video in detail.") of test clips — hallucinated objects
  (CHAIR-i over shape mentions, CHAIR-s over descriptions), wrong motions (a sentence that names one
  shape of the clip and says how it moves — ``moves left`` / ``stays still`` — where no object of
  that shape moves so), precision and recall of the shapes named (:func:`description_errors`);
* **the video prior** — on violating clips (a co-occurrence trigger shown, its partner absent) the
  false "yes" to "Is there a <partner> in the video?" and the descriptions naming the partner,
  each beside control clips;
* **video QA** — exact accuracy per type on the test clips' questions (lookup types in the
  requested wording) and the mean answer length in words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.common import question
from mmalign.models.lmm import LMM
from mmalign.shapeworld import answer_yes_no, parse_mentions, qa_correct
from mmalign.shapeworld.video import VideoScene
from mmalign.shapeworld.wording import LOOKUP_TYPES, question_for
from mmalign.training.generation import generate_responses

DESCRIBE = "Describe the video in detail."
_MOTION = re.compile(
    r"\b(?:mov(?:es|ing)\s+(left|right|up|down)|(stays still|does not move|is not moving))\b"
)
_SENTENCES = re.compile(r"(?<=[.!?])\s+")


def _rate(num: int, den: int) -> float:
    return num / den if den else float("nan")


def claimed_motion(sentence: str) -> str | None:
    """The motion a sentence states (``left``/``right``/``up``/``down``/``still``), or None.

    ``enters from the left and moves right`` → ``right`` (where it comes from is not a motion)."""
    m = _MOTION.search(sentence.lower())
    if m is None:
        return None
    return m.group(1) or "still"


def description_errors(descriptions: Sequence[str], clips: Sequence[VideoScene]) -> dict[str, float | int]:
    """Hallucinated objects, wrong motions, and shape precision/recall of video descriptions.

    Args:
        descriptions: one text per clip.
        clips: the clips' true scene graphs (tracks: shape and direction).

    Returns:
        ``chair_i`` (mentions of absent shapes / mentions), ``chair_s`` (descriptions with one /
        descriptions), ``wrong_motion`` (motion claims about a present shape that no object of
        that shape makes / motion claims about present shapes), ``precision`` (distinct named
        shapes present / distinct named), ``recall`` (distinct present shapes named / present),
        ``words`` (mean words), and the counts ``n``, ``mentions``, ``motion_claims``. A rate with
        an empty denominator is NaN.

    Raises:
        ValueError: the two sequences differ in length.
    """
    if len(descriptions) != len(clips):
        raise ValueError(f"{len(descriptions)} descriptions for {len(clips)} clips")
    c = dict.fromkeys(
        ("mentions", "halluc", "desc_halluc", "claims", "wrong", "named", "named_ok", "shapes", "recalled"), 0
    )
    words = 0
    for text, clip in zip(descriptions, clips, strict=True):
        present = {t.shape for t in clip.tracks}
        mentions = parse_mentions(text)
        bad = [m for m in mentions if m.shape not in present]
        c["mentions"] += len(mentions)
        c["halluc"] += len(bad)
        c["desc_halluc"] += bool(bad)
        named = {m.shape for m in mentions}
        c["named"] += len(named)
        c["named_ok"] += len(named & present)
        c["shapes"] += len(present)
        c["recalled"] += len(named & present)
        words += len(text.split())
        for sentence in _SENTENCES.split(text):
            shapes = {m.shape for m in parse_mentions(sentence)}
            motion = claimed_motion(sentence)
            if motion is None or len(shapes) != 1 or not shapes <= present:
                continue
            (shape,) = shapes
            c["claims"] += 1
            c["wrong"] += not any(t.shape == shape and t.direction == motion for t in clip.tracks)
    n = len(descriptions)
    return {
        "chair_i": _rate(c["halluc"], c["mentions"]),
        "chair_s": _rate(c["desc_halluc"], n),
        "wrong_motion": _rate(c["wrong"], c["claims"]),
        "precision": _rate(c["named_ok"], c["named"]),
        "recall": _rate(c["recalled"], c["shapes"]),
        "words": _rate(words, n),
        "n": n,
        "mentions": c["mentions"],
        "motion_claims": c["claims"],
    }


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"missing ShapeWorld file {path} (python -m mmalign.shapeworld generate)")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def measure_video(
    model: LMM, processor: MultimodalProcessor, data_dir: str | Path, n_clips: int = 100, n_prior: int = 100,
    wording: str = "natural", batch_size: int = 32, max_new_tokens: int = 80,
) -> dict[str, Any]:  # fmt: skip
    """The module's held-out video measurements of one model (greedy).

    Args:
        data_dir: a generated ShapeWorld dataset (``scenes/test.jsonl``, ``qa/test.jsonl``,
            ``prior/test_video.jsonl``).
        n_clips: the first test clips described and questioned.
        n_prior: probes per group (violating, control) of ``prior/test_video.jsonl``.
        wording: ``natural`` or ``terse`` for the lookup questions (video existence, motion) and
            the prior probes (:func:`mmalign.shapeworld.wording.question_for`, variants cycled).

    Returns:
        ``desc/<key>`` (:func:`description_errors`), ``qa/<type>`` accuracies and ``qa/accuracy``
        (all questions), ``qa/answer_words``, ``prior/yes`` / ``prior/yes_control`` (false "yes"
        to the partner) and ``prior/mention`` / ``prior/mention_control`` (descriptions naming it),
        ``n`` (counts).

    Raises:
        FileNotFoundError: a dataset file is missing.
    """
    root = Path(data_dir)

    def gen(examples: list, tokens: int) -> list[str]:
        return generate_responses(model, processor, examples, batch_size=batch_size, max_new_tokens=tokens)

    clips = [
        VideoScene.from_dict(s) for s in _jsonl(root / "scenes" / "test.jsonl") if s.get("kind") == "video"
    ][:n_clips]
    ids = {c.id for c in clips}
    said = gen([question(c.id, DESCRIBE, video=root / f"videos/{c.id}.mp4") for c in clips], max_new_tokens)
    out: dict[str, Any] = {f"desc/{k}": v for k, v in description_errors(said, clips).items()}

    items = [q for q in _jsonl(root / "qa" / "test.jsonl") if q.get("scene_id") in ids and "video" in q]
    texts = [
        question_for(q, wording, k) if q["type"] in LOOKUP_TYPES else q["question"]
        for k, q in enumerate(items)
    ]
    answers = gen(
        [question(q["scene_id"], t, video=root / q["video"]) for q, t in zip(items, texts, strict=True)], 16
    )
    right = [qa_correct(q, a) for q, a in zip(items, answers, strict=True)]
    for t in sorted({q["type"] for q in items}):
        flags = [r for q, r in zip(items, right, strict=True) if q["type"] == t]
        out[f"qa/{t}"] = _rate(sum(flags), len(flags))
    out["qa/accuracy"] = _rate(sum(right), len(right))
    out["qa/answer_words"] = _rate(sum(len(a.split()) for a in answers), len(answers))

    probes = _jsonl(root / "prior" / "test_video.jsonl")
    probes = [p for g in ("violating", "control") for p in [p for p in probes if p["group"] == g][:n_prior]]
    asked = [
        question(
            p["scene_id"],
            question_for({"type": "video_existence", "shape": p["partner"]}, wording, k),
            video=root / p["video"],
        )
        for k, p in enumerate(probes)
    ]
    yes = gen(asked, 4)
    told = gen([question(p["scene_id"], DESCRIBE, video=root / p["video"]) for p in probes], max_new_tokens)
    for group, suffix in (("violating", ""), ("control", "_control")):
        rows = [(p, a, d) for p, a, d in zip(probes, yes, told, strict=True) if p["group"] == group]
        out[f"prior/yes{suffix}"] = _rate(sum(answer_yes_no(a) is True for _, a, _ in rows), len(rows))
        out[f"prior/mention{suffix}"] = _rate(
            sum(any(m.shape == p["partner"] for m in parse_mentions(d)) for p, _, d in rows), len(rows)
        )
    out["n"] = {"clips": len(clips), "qa": len(items), "prior": len(probes)}
    return out


def context_quality(contexts: Mapping[str, str], clips: Mapping[str, VideoScene]) -> dict[str, float | int]:
    """:func:`description_errors` of i-SRT's contexts c_t (``{video key: text}``) against their clips
    (``{video key: scene}``); contexts of unknown clips are left out."""
    keys = [k for k in contexts if k in clips]
    return description_errors([contexts[k] for k in keys], [clips[k] for k in keys])
