"""i-SRT's data on ShapeWorld videos: the label-free prompt pool and the judge/revise format records.

**Prompt pool** (:func:`pool_records`, the ``pool.path`` of ``configs/isrt/tiny_shapeworld.yaml``).
i-SRT needs prompts, not answers. For every clip of a split the pool asks, label-free, whether
each shape of the world's vocabulary is in the video (one wording per record, drawn from the terse
and natural wordings: :func:`mmalign.shapeworld.wording.mixed_question`) and the clip's annotated
motion questions. Each record carries

* ``truth`` — the exact QA item from the scene graph (what the exact oracle and the judge-agreement
  metric compare with; i-SRT itself never reads it);
* ``annotation`` — the answer the *training annotation* gives (video annotation noise included:
  an absent partner named by the clip's noisy description counts as present,
  :func:`mmalign.shapeworld.video_text.video_noise_partners`) — what the same-budget control, SFT
  continued on the same prompts, is trained on.

**Judge and revise format** (:func:`format_records`). The tiny model has never seen i-SRT's judge
prompt ("Which answer is more accurate …? Reply with one letter, A or B.") nor its revise prompt;
asked them, it answers with a fixed letter whatever the order (92–100 % of judged prompts tied on
order disagreement in 2-iteration runs of ``configs/isrt/tiny_shapeworld.yaml``). A real LMM learned both formats from its instruction data, so the recipe adds
them the same way, from the *training annotations as they are* (noise included — no knowledge
beyond what the SFT model was taught):

* judge records: the judge prompt (:func:`mmalign.isrt.prompts.judge_text`) on a training video
  question with the annotated answer and a wrong one in a random order, with the clip's annotated
  description as context (2 of 3) or none; the target is the annotated answer's letter;
* revise records: the revise prompt with a corrupted annotated description (an object sentence
  dropped, a shape or a direction changed, or unchanged) and the annotated description as target.

Records are LLaVA JSON (``id``, ``video``, ``conversations``, ``task``, ``scene_id``).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from mmalign.isrt.config import ISRTConfig
from mmalign.isrt.prompts import describe_text, judge_text
from mmalign.shapeworld.recipe.tiny_preset import read_world
from mmalign.shapeworld.video import DIRECTIONS, VideoScene
from mmalign.shapeworld.video_text import video_noise_partners
from mmalign.shapeworld.wording import mixed_question

VIDEO = "<video>"
JUDGED_TYPES = (
    "video_existence",
    "video_motion",
    "video_count",
    "video_event",
    "video_appear",
    "video_leave",
)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"missing ShapeWorld file {path} (python -m mmalign.shapeworld generate)")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def load_clips(data_dir: str | Path, split: str) -> dict[str, VideoScene]:
    """The video scene graphs of ``scenes/<split>.jsonl`` by clip id."""
    rows = _jsonl(Path(data_dir) / "scenes" / f"{split}.jsonl")
    return {r["id"]: VideoScene.from_dict(r) for r in rows if r.get("kind") == "video"}


def _annotation_records(data_dir: Path, split: str) -> list[dict[str, Any]]:
    path = data_dir / "llava" / f"{split}.json"
    if not path.exists():
        raise FileNotFoundError(f"missing ShapeWorld file {path} (python -m mmalign.shapeworld generate)")
    return [r for r in json.loads(path.read_text()) if "video" in r]


def _turns(record: dict[str, Any]) -> tuple[str, str]:
    convs = record["conversations"]
    return convs[0]["value"].replace(VIDEO, "").strip(), convs[1]["value"]


def pool_records(data_dir: str | Path, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """The label-free prompt pool of a split (module docstring).

    Returns:
        ``[{id, video, question, truth, annotation, scene_id}]``: per clip, one existence question
        per vocabulary shape (``truth`` exact, ``annotation`` the noisy annotation's answer) and
        the clip's annotated motion questions (motion annotations are exact).

    Raises:
        FileNotFoundError: the dataset lacks ``world.json``, ``scenes/`` or ``llava/`` files.
    """
    root = Path(data_dir)
    cfg = read_world(root)
    clips = load_clips(root, split)
    out: list[dict[str, Any]] = []
    for clip_id, clip in clips.items():
        shown = {t.shape for t in clip.tracks}
        annotated = shown | set(video_noise_partners(clip, cfg))
        for shape in cfg.shapes:
            rid = f"{clip_id}-exist-{shape}"
            item = {"type": "video_existence", "shape": shape}
            out.append(
                {
                    "id": rid,
                    "video": f"videos/{clip_id}.mp4",
                    "question": mixed_question(item, random.Random(f"{seed}:isrt-pool:{rid}")),
                    "truth": {**item, "answer": "yes" if shape in shown else "no"},
                    "annotation": "yes" if shape in annotated else "no",
                    "scene_id": clip_id,
                }
            )
    for rec in _annotation_records(root, split):
        if rec.get("task") == "video_motion" and rec.get("scene_id") in clips:
            question, answer = _turns(rec)
            out.append(
                {
                    "id": rec["id"],
                    "video": rec["video"],
                    "question": question,
                    "truth": {"type": "video_motion", "answer": answer},
                    "annotation": answer,
                    "scene_id": rec["scene_id"],
                }
            )
    return out


def wrong_answer(task: str, answer: str, shapes: tuple[str, ...], rng: random.Random) -> str | None:
    """A wrong answer of the same kind as the annotated ``answer`` (None: no such answer).

    yes ↔ no; another direction; a count ± 1; another shape.
    """
    if answer in ("yes", "no"):
        return "no" if answer == "yes" else "yes"
    if task == "video_motion" and answer in DIRECTIONS:
        return rng.choice([d for d in DIRECTIONS if d != answer])
    if task == "video_count" and answer.isdigit():
        n = int(answer)
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    if task in ("video_appear", "video_leave") and answer in shapes:
        return rng.choice([s for s in shapes if s != answer])
    return None


_SENTENCE = re.compile(r"(?<=\.)\s+")


def corrupt_description(text: str, shapes: tuple[str, ...], rng: random.Random) -> tuple[str, str]:
    """A corrupted copy of a description and how: ``drop`` (an object sentence removed),
    ``shape`` (one shape word replaced), ``direction`` (the direction after one ``moves`` replaced;
    never the side an object enters from) or ``same``."""
    sentences = _SENTENCE.split(text.strip())
    kind = rng.choice(("drop", "shape", "direction", "same"))
    if kind == "drop" and len(sentences) > 2:
        k = rng.randrange(1, len(sentences))  # never the count sentence
        return " ".join(sentences[:k] + sentences[k + 1 :]), "drop"
    words = text.split(" ")
    if kind == "shape":
        at = [i for i, w in enumerate(words) if w.strip(".,") in shapes]
        if at:
            i = rng.choice(at)
            old = words[i].strip(".,")
            words[i] = words[i].replace(old, rng.choice([s for s in shapes if s != old]))
            return " ".join(words), "shape"
    if kind == "direction":
        at = [
            i
            for i, w in enumerate(words)
            if w.strip(".,") in DIRECTIONS[:4] and i and words[i - 1] == "moves"
        ]
        if at:
            i = rng.choice(at)
            old = words[i].strip(".,")
            words[i] = words[i].replace(old, rng.choice([d for d in DIRECTIONS[:4] if d != old]))
            return " ".join(words), "direction"
    return text, "same"


def format_records(
    data_dir: str | Path, isrt: ISRTConfig, split: str = "train", n_judge: int = 4000, n_revise: int = 1500,
    seed: int = 0, context_share: float = 2 / 3,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Judge and revise format records from the training annotations (module docstring).

    Args:
        isrt: the i-SRT config whose prompts (judge, context block, revise) the records use.
        n_judge / n_revise: how many records of each (drawn with ``seed``; at most the available).
        context_share: share of judge records with the annotated description as context.

    Returns:
        ``(records, summary)``; summary counts the records by kind, letter and corruption.

    Raises:
        FileNotFoundError: the dataset lacks ``world.json`` or ``llava/<split>.json``.
    """
    root = Path(data_dir)
    shapes = read_world(root).shapes
    rng = random.Random(f"{seed}:isrt-format")
    annotated = _annotation_records(root, split)
    captions = {r["scene_id"]: _turns(r)[1] for r in annotated if r.get("task") == "video_caption"}
    questions = [r for r in annotated if r.get("task") in JUDGED_TYPES and r.get("scene_id") in captions]
    counts: Counter[str] = Counter()
    out: list[dict[str, Any]] = []
    for rec in rng.sample(questions, min(n_judge, len(questions))):
        question, answer = _turns(rec)
        wrong = wrong_answer(rec["task"], answer, shapes, rng)
        if wrong is None:
            counts["judge_skipped"] += 1
            continue
        first_right = rng.random() < 0.5
        a, b = (answer, wrong) if first_right else (wrong, answer)
        context = captions[rec["scene_id"]] if rng.random() < context_share else None
        letter = "A" if first_right else "B"
        counts[f"judge_{letter}"] += 1
        counts["judge_with_context" if context else "judge_without_context"] += 1
        out.append(
            _record(
                f"{rec['id']}-judge", rec, judge_text(isrt, question, a, b, context), letter, "isrt_judge"
            )
        )
    clips = sorted(captions)
    for clip_id in rng.sample(clips, min(n_revise, len(clips))):
        previous, how = corrupt_description(captions[clip_id], shapes, rng)
        counts[f"revise_{how}"] += 1
        src = {"video": f"videos/{clip_id}.mp4", "scene_id": clip_id}
        out.append(
            _record(f"{clip_id}-revise", src, describe_text(isrt, previous), captions[clip_id], "isrt_revise")
        )
    rng.shuffle(out)
    return out, {"records": len(out), **dict(sorted(counts.items()))}


def _record(rid: str, src: dict[str, Any], prompt: str, target: str, task: str) -> dict[str, Any]:
    return {
        "id": rid,
        "video": src["video"],
        "conversations": [{"from": "human", "value": f"{VIDEO}\n{prompt}"}, {"from": "gpt", "value": target}],
        "task": task,
        "scene_id": src["scene_id"],
    }
