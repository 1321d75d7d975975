"""POPE (Li et al., 2023, https://arxiv.org/abs/2305.10355): yes/no object probes per split.

Input: POPE's jsonl files (``question_id, image, text, label``), one per split; the split name
(random / popular / adversarial) is read from the file name. ShapeWorld datasets ship them as
``pope/{split}_{random,popular,adversarial}.jsonl``. Metrics (accuracy, precision, recall, F1,
yes-ratio, with ``yes`` positive) come from :func:`mmalign.shapeworld.pope.pope_metrics`; an
answer with no yes/no word counts as ``no`` (POPE's own script counts it as ``yes``; see there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmalign.data.formats import RecordError
from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.common import GenerationOptions, answer, media_file, question, read_records
from mmalign.models.lmm import LMM
from mmalign.shapeworld.pope import SPLITS, pope_metrics


def split_name(path: str | Path) -> str:
    """``random`` / ``popular`` / ``adversarial`` from a POPE file name (else the file's stem)."""
    stem = Path(path).stem.lower()
    found = [s for s in SPLITS if s in stem]
    return found[0] if len(found) == 1 else Path(path).stem


def load_pope(path: str | Path) -> list[dict[str, Any]]:
    """POPE records; a label other than yes/no is an error naming the record."""
    records = read_records(path, ("question_id", "image", "text", "label"))
    for r in records:
        r["label"] = str(r["label"]).strip().lower()
        if r["label"] not in ("yes", "no"):
            raise RecordError(f"{r['_where']}: label must be 'yes' or 'no', got {r['label']!r}")
    return records


def shapeworld_pope_files(data_dir: str | Path, split: str = "test") -> list[Path]:
    """The three POPE files of a ShapeWorld split."""
    files = [Path(data_dir) / "pope" / f"{split}_{kind}.jsonl" for kind in SPLITS]
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"missing POPE file {f} (is {data_dir} a ShapeWorld dataset?)")
    return files


def run_pope(
    model: LMM,
    processor: MultimodalProcessor,
    files: list[str | Path],
    image_root: str | Path,
    gen: GenerationOptions,
    limit: int | None = None,
) -> dict[str, Any]:
    """Answer every probe and score each split.

    Args:
        files: POPE jsonl files (one per split).
        image_root: folder the records' ``image`` names are relative to.
        limit: first N probes per split (None: all).

    Returns:
        ``{split: metrics}`` plus ``"average"`` (mean of each metric over the splits).
    """
    out: dict[str, Any] = {}
    for path in files:
        records = load_pope(path)[:limit]
        examples = [
            question(str(r["question_id"]), r["text"], media_file(image_root, r["image"], r["_where"]))
            for r in records
        ]
        answers = answer(model, processor, examples, gen, f"pope-{split_name(path)}", max_new_tokens=8)
        out[split_name(path)] = pope_metrics([r["label"] for r in records], answers)
    if out:
        keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
        out["average"] = {k: sum(m[k] for m in out.values()) / len(out) for k in keys}
    return out
