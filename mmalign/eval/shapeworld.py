"""Exact evaluation of an LMM on a ShapeWorld split: captions (CHAIR), QA by type, POPE, video QA.

Everything is judged against the scene graphs by :mod:`mmalign.shapeworld.judges` — no LLM judge,
no annotation noise (evaluation truth is exact even when the training text was noisy).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmalign.data.formats import Example, load_llava
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.lmm import LMM
from mmalign.shapeworld import Scene, chair, pope_metrics, qa_correct
from mmalign.training.generation import generate_responses

CAPTION_PROMPT = "What is in this image? Describe each object and where it is."
POPE_SPLITS = ("random", "popular", "adversarial")


@dataclass
class EvalLimits:
    """How much of a split to evaluate (the first N scenes, in file order)."""

    n_images: int = 100
    n_videos: int = 20
    batch_size: int = 32
    max_new_tokens: int = 72


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"missing ShapeWorld file {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ask(root: Path, media: str, question: str, video: bool = False) -> Example:
    placeholder = "<video>" if video else "<image>"
    paths = [root / media]
    return Example(
        id=media,
        messages=[{"role": "user", "content": f"{placeholder}\n{question}"}],
        images=[] if video else paths,
        videos=paths if video else [],
    )


def evaluate_split(
    model: LMM,
    processor: MultimodalProcessor,
    data_dir: str | Path,
    split: str = "test",
    limits: EvalLimits | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate and judge on the first ``limits.n_images`` image and ``n_videos`` video scenes.

    Returns:
        ``{"chair": {...}, "qa": {type: accuracy, "n": {type: count}}, "pope": {split: metrics},
        "video_qa": {...}, "samples": [...]}``.
    """
    limits = limits or EvalLimits()
    root = Path(data_dir)
    scenes_all = _read_jsonl(root / "scenes" / f"{split}.jsonl")
    image_scenes = [Scene.from_dict(s) for s in scenes_all if s.get("kind", "image") == "image"][
        : limits.n_images
    ]
    video_ids = [s["id"] for s in scenes_all if s.get("kind") == "video"][: limits.n_videos]
    keep_images = {s.id for s in image_scenes}
    gen = {"batch_size": limits.batch_size, "progress": progress}

    image_of = {s.id: f"images/{s.id}.png" for s in image_scenes}
    captions = generate_responses(
        model,
        processor,
        [_ask(root, image_of[s.id], CAPTION_PROMPT) for s in image_scenes],
        max_new_tokens=limits.max_new_tokens,
        desc="captions",
        **gen,
    )
    result: dict[str, Any] = {"chair": chair(captions, image_scenes) if image_scenes else {}}
    result["samples"] = [
        {"scene": s.id, "caption": c} for s, c in zip(image_scenes[:5], captions, strict=False)
    ]

    qa_items = _read_jsonl(root / "qa" / f"{split}.jsonl")
    img_items = [q for q in qa_items if q["scene_id"] in keep_images]
    keep_videos = set(video_ids)
    vid_items = [q for q in qa_items if q["scene_id"] in keep_videos]
    result["qa"] = _judge_qa(model, processor, root, img_items, False, gen)
    result["video_qa"] = _judge_qa(model, processor, root, vid_items, True, gen)

    result["pope"] = {}
    for pope_split in POPE_SPLITS:
        probes = [
            p
            for p in _read_jsonl(root / "pope" / f"{split}_{pope_split}.jsonl")
            if Path(p["image"]).stem in keep_images
        ]
        answers = generate_responses(
            model,
            processor,
            [_ask(root, p["image"], p["text"]) for p in probes],
            max_new_tokens=4,
            desc=f"pope-{pope_split}",
            **gen,
        )
        result["pope"][pope_split] = pope_metrics([p["label"] for p in probes], answers)
    return result


def _judge_qa(
    model: LMM, processor: MultimodalProcessor, root: Path, items: list[dict], video: bool, gen: dict
) -> dict[str, Any]:
    if not items:
        return {"n": {}}
    media = [it["video"] if video else it["image"] for it in items]
    answers = generate_responses(
        model,
        processor,
        [_ask(root, m, it["question"], video) for m, it in zip(media, items, strict=True)],
        max_new_tokens=16,
        desc="video-qa" if video else "qa",
        **gen,
    )
    hits: dict[str, list[bool]] = defaultdict(list)
    for it, ans in zip(items, answers, strict=True):
        hits[it["type"]].append(qa_correct(it, ans))
    out: dict[str, Any] = {t: sum(v) / len(v) for t, v in sorted(hits.items())}
    out["n"] = {t: len(v) for t, v in sorted(hits.items())}
    return out


@torch.no_grad()
def mean_loss(
    model: LMM,
    processor: MultimodalProcessor,
    examples: list[Example],
    batch_size: int = 32,
    reduction: str = "token",
) -> float:
    """Next-token loss over ``examples``: mean over all target tokens (``token``) or examples (``example``)."""
    was_training = model.training
    model.eval()
    total, weight = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = processor.collate([processor.encode(e) for e in examples[i : i + batch_size]])
        out = model(
            batch["input_ids"],
            batch["attention_mask"],
            batch["images"],
            batch["videos"],
            batch["labels"],
            loss_reduction=reduction,
        )
        w = int((batch["labels"][:, 1:] != -100).sum()) if reduction == "token" else len(batch["ids"])
        total += float(out["loss"]) * w
        weight += w
    model.train(was_training)
    return total / max(weight, 1)


def load_llava_split(data_dir: str | Path, split: str) -> list[Example]:
    """The LLaVA records of a ShapeWorld split (media paths relative to the dataset folder)."""
    return load_llava(Path(data_dir) / "llava" / f"{split}.json", media_root=data_dir)


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of an :func:`evaluate_split` result."""
    lines = ["metric                         value"]
    c = result.get("chair") or {}
    if c:
        lines += [
            f"caption CHAIR-i                {c['chair_i']:.3f}",
            f"caption CHAIR-s                {c['chair_s']:.3f}",
            f"caption recall                 {c['recall']:.3f}",
        ]
    for kind in ("qa", "video_qa"):
        for t, n in result.get(kind, {}).get("n", {}).items():
            name = f"{kind} {t}"
            lines.append(f"{name:<30} {result[kind][t]:.3f}  (n={n})")
    for s, m in result.get("pope", {}).items():
        name = f"POPE {s} F1"
        lines.append(f"{name:<30} {m['f1']:.3f}  (acc {m['accuracy']:.3f}, yes-ratio {m['yes_ratio']:.3f})")
    return "\n".join(lines)
