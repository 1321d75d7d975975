"""GAVIE (Liu et al., 2023, LRV-Instruction, https://arxiv.org/abs/2306.14565): judge-rated free answers.

No reference answers: a judge sees the image as dense region captions with boxes, the instruction
and the answer, and scores **Accuracy** (consistent with the image) and **Relevancy** (follows the
instruction), each 0–10.

Records (JSON list or JSONL): ``{id, image, instruction | question, regions: [{caption, box:
[x, y, w, h]}]}`` — the layout of ShapeWorld's ``dense/`` files plus an instruction.

- **LLM judge**: the prompt below; the reply must hold ``Accuracy: N`` and ``Relevancy: N``
  (0–10); anything else is retried by the client, then counted as unparsed and left out of the means.
- **Exact judge** (ShapeWorld, :func:`shapeworld_records`): instructions are the split's QA items
  plus one description request per image. Accuracy: QA → 10 when correct and no absent shape is
  named, else 0; description → 10 × the share of shape mentions that are true (shape present and,
  if a colour is given, an object of that shape has it). Relevancy: 10 when the answer has the
  asked form (a yes/no word, a number, a colour, a position, an option, a shape; for a
  description, at least one shape), else 0.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from mmalign.data.formats import RecordError
from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.common import GenerationOptions, answer, mean, media_file, question, read_records
from mmalign.llm.client import ChatClient
from mmalign.models.lmm import LMM
from mmalign.shapeworld.judges import qa_correct
from mmalign.shapeworld.parsing import (
    answer_yes_no,
    colors_in,
    parse_letter,
    parse_mentions,
    parse_number,
    tokenize,
)
from mmalign.shapeworld.world import Scene

DESCRIBE = "Describe the image in detail."
PROMPT = """Give an image with the following information: bounding boxes, given as the object's \
left-top corner coordinates (X, Y) and its size (Width, Height). Highly overlapping bounding boxes may \
refer to the same object.

bounding box:
{regions}

Here is the instruction for the image:
{instruction}

Answer: {answer}

Suppose you are a smart teacher. After looking at the image information above, score the answer from 0 \
to 10 on two criteria:
1. Accuracy: whether the answer is accurate with respect to the image content (no false objects, \
attributes or relations).
2. Relevancy: whether the answer directly follows the instruction.

Output format:
Accuracy: <score>
Reason: <one sentence>
Relevancy: <score>
Reason: <one sentence>
"""


def judge_prompt(record: dict[str, Any], response: str) -> str:
    """The judge's prompt: regions as ``caption X: x Y: y Width: w Height: h`` lines."""
    lines = []
    for r in record["regions"]:
        x, y, w, h = r["box"]
        lines.append(f"{r['caption']} X: {x} Y: {y} Width: {w} Height: {h}")
    return PROMPT.format(regions="\n".join(lines), instruction=record["instruction"], answer=response)


def parse_scores(text: str) -> dict[str, float]:
    """``{"accuracy", "relevancy"}`` from a judge reply.

    Raises:
        ValueError: a score is missing or outside 0–10.
    """
    out = {}
    for key in ("accuracy", "relevancy"):
        m = re.search(rf"{key}\s*(?:score)?\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE)
        if m is None:
            raise ValueError(f"no '{key.capitalize()}: N' in the reply")
        value = float(m.group(1))
        if not 0 <= value <= 10:
            raise ValueError(f"{key} {value} is outside 0-10")
        out[key] = value
    return out


def load_gavie(path: str | Path, image_dir: str | Path) -> list[dict[str, Any]]:
    """GAVIE records (see module docstring) with ``image_path`` resolved; errors name the record."""
    records = read_records(path, ("image", "instruction", "regions"), aliases={"question": "instruction"})
    for i, r in enumerate(records):
        r.setdefault("id", str(i))
        regions = r["regions"]
        if not isinstance(regions, list) or not all(
            isinstance(g, dict) and "caption" in g and isinstance(g.get("box"), list) and len(g["box"]) == 4
            for g in regions
        ):
            raise RecordError(f"{r['_where']}: 'regions' must be a list of {{caption, box: [x, y, w, h]}}")
        r["image_path"] = str(media_file(image_dir, r["image"], r["_where"]))
    return records


def shapeworld_records(data_dir: str | Path, split: str = "test", n: int = 100) -> list[dict[str, Any]]:
    """GAVIE records over the first image scenes of a ShapeWorld split (description + QA per image)."""
    from mmalign.eval.shapeworld import _read_jsonl

    root = Path(data_dir)
    dense = {d["id"]: d for d in _read_jsonl(root / "dense" / f"{split}.jsonl")}
    scenes = {
        s["id"]: s
        for s in _read_jsonl(root / "scenes" / f"{split}.jsonl")
        if s.get("kind", "image") == "image"
    }
    qa: dict[str, list[dict]] = defaultdict(list)
    for q in _read_jsonl(root / "qa" / f"{split}.jsonl"):
        qa[q["scene_id"]].append(q)
    records: list[dict[str, Any]] = []
    for sid, scene in scenes.items():
        base = {"image": dense[sid]["image"], "regions": dense[sid]["regions"], "scene": scene}
        base["image_path"] = str(root / base["image"])
        items = [{"type": "describe"}] + qa[sid]
        for k, item in enumerate(items):
            text = DESCRIBE if item["type"] == "describe" else item["question"]
            records.append({**base, "id": f"{sid}-{k}", "instruction": text, "truth": item})
            if len(records) >= n:
                return records
    return records


def _has_form(item: dict[str, Any], text: str) -> bool:
    kind = item["type"]
    if kind in ("count", "video_count"):
        return parse_number(text) is not None
    if kind == "color":
        return bool(colors_in(text))
    if kind == "position":
        return bool(
            {"top", "bottom", "left", "right", "center", "middle", "centre", "upper", "lower"}
            & set(tokenize(text))
        )
    if kind == "multiple_choice":
        return parse_letter(text, item.get("options")) is not None
    if kind in ("video_appear", "video_leave", "describe"):
        return bool(parse_mentions(text))
    return answer_yes_no(text) is not None


def exact_scores(record: dict[str, Any], text: str) -> dict[str, float]:
    """Exact Accuracy and Relevancy (0–10) of ``text`` for a ShapeWorld record (module docstring)."""
    scene = Scene.from_dict(record["scene"])
    item = record["truth"]
    mentions = parse_mentions(text)
    relevancy = 10.0 if _has_form(item, text) else 0.0
    if item["type"] == "describe":
        good = [
            m
            for m in mentions
            if m.shape in scene.shapes()
            and (m.color is None or any(o.shape == m.shape and o.color == m.color for o in scene.objects))
        ]
        return {"accuracy": 10.0 * len(good) / len(mentions) if mentions else 0.0, "relevancy": relevancy}
    clean = all(m.shape in scene.shapes() for m in mentions)
    return {"accuracy": 10.0 if qa_correct(item, text) and clean else 0.0, "relevancy": relevancy}


def run_gavie(
    model: LMM,
    processor: MultimodalProcessor,
    records: list[dict[str, Any]],
    gen: GenerationOptions,
    judge: ChatClient | None = None,
) -> dict[str, Any]:
    """Answer and score every record; exact when records carry a scene and no judge is given.

    Returns:
        ``accuracy``, ``relevancy`` (means over scored records), ``n``, ``n_unparsed``, ``judge``,
        ``records`` (id, instruction, answer, scores).
    """
    examples = [question(str(r["id"]), r["instruction"], Path(r["image_path"])) for r in records]
    answers = answer(model, processor, examples, gen, "gavie")
    if judge is None:
        if any("scene" not in r for r in records):
            raise ValueError("GAVIE records without a ShapeWorld scene need an LLM judge (--judge-model)")
        scores: list[dict | None] = [exact_scores(r, a) for r, a in zip(records, answers, strict=True)]
    else:
        prompts = [
            [{"role": "user", "content": judge_prompt(r, a)}] for r, a in zip(records, answers, strict=True)
        ]
        scores = judge.chat_many(prompts, validate=parse_scores, on_invalid="none", desc="gavie-judge")
    done = [s for s in scores if s is not None]
    return {
        "accuracy": mean([s["accuracy"] for s in done]),
        "relevancy": mean([s["relevancy"] for s in done]),
        "n": len(done),
        "n_unparsed": len(scores) - len(done),
        "judge": "exact" if judge is None else judge.config.model,
        "records": [
            {"id": r["id"], "instruction": r["instruction"], "answer": a, "scores": s}
            for r, a, s in zip(records, answers, scores, strict=True)
        ],
    }
