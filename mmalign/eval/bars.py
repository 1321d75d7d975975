"""The tiny ShapeWorld model's quality bars: clear-scene accuracy, prior-driven hallucination, video.

A model that has not learned to ground words cannot show hallucination, and then no alignment
method can be shown to reduce it; these bars (the issue "A tiny ShapeWorld model that learns — and
hallucinates like a real LMM") say whether it has. Every number is an exact judgement against
scene graphs:

- **clear** (held-out test split): existence yes/no accuracy and yes-ratio on the balanced
  existence questions, colour / count / position accuracy, caption CHAIR-i;
- **prior** (``prior/test.jsonl``, see :mod:`mmalign.shapeworld.prior`): on *violating* scenes
  (trigger shown, partner absent) the rate of "yes" to "Is there a <partner>?" and of captions
  that mention the partner, each beside the same rate on *control* scenes (neither shown);
- **video** (test-split clips): motion-direction and existence accuracy.

:func:`measure` computes them for one model; :func:`format_table` prints several models side by
side (the SFT model, its same-budget control continuation, each alignment method) with the
required value of each bar. The bars describe the SFT model; an alignment method is judged by how
far it lowers the prior rows below the control while keeping the clear rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.common import question
from mmalign.models.lmm import LMM
from mmalign.shapeworld import Scene, answer_yes_no, chair, parse_mentions, qa_correct
from mmalign.training.generation import generate_responses

CAPTION_PROMPT = "Describe the image in detail."
CLEAR_TYPES = ("existence", "color", "count", "position")
VIDEO_TYPES = ("video_motion", "video_existence")


@dataclass(frozen=True)
class Bar:
    """One row of the table: a measured key, how it is judged, and the required value."""

    key: str
    label: str
    check: Callable[[Mapping[str, float]], bool] | None
    required: str


def _ratio_ok(num: str, den: str, factor: float = 5.0) -> Callable[[Mapping[str, float]], bool]:
    return lambda m: m[num] > 0 and m[num] >= factor * m[den]


BARS: tuple[Bar, ...] = (
    Bar("existence", "clear: existence accuracy", lambda m: m["existence"] >= 0.90, ">= 0.90"),
    Bar(
        "existence_yes_ratio",
        "clear: existence yes-ratio",
        lambda m: 0.45 <= m["existence_yes_ratio"] <= 0.55,
        "0.45-0.55",
    ),
    Bar("color", "clear: colour accuracy", lambda m: m["color"] >= 0.85, ">= 0.85"),
    Bar("count", "clear: count accuracy", lambda m: m["count"] >= 0.90, ">= 0.90"),
    Bar("position", "clear: position accuracy", lambda m: m["position"] >= 0.80, ">= 0.80"),
    Bar("chair_i", "clear: caption CHAIR-i", lambda m: m["chair_i"] <= 0.05, "<= 0.05"),
    Bar("prior_yes", 'prior: false "yes" to partner, violating', lambda m: m["prior_yes"] >= 0.5, ">= 0.50"),
    Bar("prior_yes_control", 'prior: false "yes" to partner, control', None, "-"),
    Bar(
        "prior_yes_x",
        "prior: false-yes violating >= 5x control",
        _ratio_ok("prior_yes", "prior_yes_control"),
        "yes",
    ),
    Bar(
        "prior_mention",
        "prior: caption mentions partner, violating",
        lambda m: m["prior_mention"] >= 0.2,
        ">= 0.20",
    ),
    Bar("prior_mention_control", "prior: caption mentions partner, control", None, "-"),
    Bar(
        "prior_mention_x",
        "prior: mentions violating >= 5x control",
        _ratio_ok("prior_mention", "prior_mention_control"),
        "yes",
    ),
    Bar("video_motion", "video: motion direction accuracy", lambda m: m["video_motion"] >= 0.85, ">= 0.85"),
    Bar("video_existence", "video: existence accuracy", lambda m: m["video_existence"] >= 0.90, ">= 0.90"),
)


@dataclass
class BarLimits:
    """How much held-out data to judge (the first N test scenes / probes, in file order)."""

    n_images: int = 200
    n_videos: int = 100
    n_prior: int = 100  # per group (violating, control)
    batch_size: int = 32


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(
            f"missing ShapeWorld file {path} (generate the dataset with `python -m mmalign.shapeworld generate`)"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ask(root: Path, media: str, text: str, video: bool = False) -> Example:
    return question(media, text, video=root / media) if video else question(media, text, image=root / media)


def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def measure(
    model: LMM,
    processor: MultimodalProcessor,
    data_dir: str | Path,
    limits: BarLimits | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Every bar's measured value for one model (greedy decoding), plus counts and samples.

    Returns:
        ``{<bar key>: value, ..., "caption_words": mean words per caption (clear and prior
        scenes), "n": {<what>: count}, "samples": [...]}``.
    """
    limits = limits or BarLimits()
    root = Path(data_dir)

    def gen(examples: list[Example], max_new_tokens: int, desc: str) -> list[str]:
        return generate_responses(
            model,
            processor,
            examples,
            batch_size=limits.batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
            desc=desc,
        )

    scenes_all = _jsonl(root / "scenes" / "test.jsonl")
    scenes = [Scene.from_dict(s) for s in scenes_all if s.get("kind", "image") == "image"][: limits.n_images]
    video_ids = {s["id"] for s in [s for s in scenes_all if s.get("kind") == "video"][: limits.n_videos]}
    keep = {s.id for s in scenes}
    out: dict[str, Any] = {"n": {}}

    captions = gen([_ask(root, f"images/{s.id}.png", CAPTION_PROMPT) for s in scenes], 80, "captions")
    out["chair_i"] = chair(captions, scenes)["chair_i"] if scenes else 0.0
    out["n"]["captions"] = len(scenes)

    qa = _jsonl(root / "qa" / "test.jsonl")
    items = [q for q in qa if q["scene_id"] in keep and q["type"] in CLEAR_TYPES]
    items += [q for q in qa if q["scene_id"] in video_ids and q["type"] in VIDEO_TYPES]
    answers = gen(
        [_ask(root, q.get("image") or q["video"], q["question"], "video" in q) for q in items], 8, "qa"
    )
    for t in CLEAR_TYPES + VIDEO_TYPES:
        pairs = [(q, a) for q, a in zip(items, answers, strict=True) if q["type"] == t]
        out[t] = _rate([qa_correct(q, a) for q, a in pairs])
        out["n"][t] = len(pairs)
    existence = [a for q, a in zip(items, answers, strict=True) if q["type"] == "existence"]
    out["existence_yes_ratio"] = _rate([answer_yes_no(a) is True for a in existence])

    probes = _jsonl(root / "prior" / "test.jsonl")
    probes = [
        p for g in ("violating", "control") for p in [q for q in probes if q["group"] == g][: limits.n_prior]
    ]
    said = gen([_ask(root, p["image"], p["question"]) for p in probes], 4, "prior-qa")
    described = gen([_ask(root, p["image"], CAPTION_PROMPT) for p in probes], 80, "prior-captions")
    for group, suffix in (("violating", ""), ("control", "_control")):
        rows = [(p, a, c) for p, a, c in zip(probes, said, described, strict=True) if p["group"] == group]
        out[f"prior_yes{suffix}"] = _rate([answer_yes_no(a) is True for _, a, _ in rows])
        out[f"prior_mention{suffix}"] = _rate(
            [any(m.shape == p["partner"] for m in parse_mentions(c)) for p, _, c in rows]
        )
        out["n"][f"prior_{group}"] = len(rows)
    every_caption = captions + described
    out["caption_words"] = sum(len(c.split()) for c in every_caption) / max(len(every_caption), 1)
    out["prior_yes_x"] = out["prior_yes"] / max(out["prior_yes_control"], 1e-9)
    out["prior_mention_x"] = out["prior_mention"] / max(out["prior_mention_control"], 1e-9)
    out["samples"] = [
        {"scene": p["scene_id"], "group": p["group"], "partner": p["partner"], "answer": a, "caption": c}
        for p, a, c in list(zip(probes, said, described, strict=True))[:: max(1, len(probes) // 6)]
    ]
    return out


def passes(measured: Mapping[str, float]) -> dict[str, bool | None]:
    """Pass/fail of every bar (``None`` for rows without a requirement)."""
    return {b.key: (b.check(measured) if b.check else None) for b in BARS}


def _cell(bar: Bar, m: Mapping[str, Any]) -> str:
    value = m[bar.key]
    if bar.key.endswith("_x"):
        text = "inf" if value > 1e6 else f"{value:.1f}x"
    else:
        text = f"{value:.3f}"
    if bar.check is None:
        return text
    return f"{text} {'ok' if bar.check(m) else 'FAIL'}"


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table: one row per bar, the required value, and one column per model."""
    names = list(results)
    head = "| bar | required | " + " | ".join(names) + " |"
    rule = "|---|---|" + "---|" * len(names)
    rows = [
        f"| {b.label} | {b.required} | " + " | ".join(_cell(b, results[n]) for n in names) + " |"
        for b in BARS
    ]
    return "\n".join([head, rule, *rows])
