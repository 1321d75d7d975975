"""POPE (Li et al., 2023, https://arxiv.org/abs/2305.10355): yes/no object probes per split.

Input: POPE's jsonl files (``question_id, image, text, label``), one per split; the split name
(random / popular / adversarial) is read from the file name. ShapeWorld datasets ship them as
``pope/{split}_{random,popular,adversarial}.jsonl``. Metrics (accuracy, precision, recall, F1,
yes-ratio, with ``yes`` positive) come from :func:`mmalign.eval.answers.pope_metrics`, which
reads answers by POPE's own rule by default (negation word in the first sentence → no, else yes)
or by the ``strict`` parser, and counts the answers that fit neither (see
:mod:`mmalign.eval.answers`). Every answer is kept as a record (split, probe, answer, reading,
whether it fit, whether it was right) for ``eval/run.py`` to write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmalign.data.formats import RecordError
from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.answers import check_parser, pope_metrics, read_yes_no
from mmalign.eval.common import GenerationOptions, answer, media_file, question, read_records
from mmalign.models.lmm import LMM
from mmalign.shapeworld.pope import SPLITS

METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
MAX_NEW_TOKENS = 32  # room for a first sentence such as "Based on the image, there is no dog."


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


def pope_records(
    split: str, records: list[dict[str, Any]], answers: list[str], parser: str, unparseable: str | None
) -> list[dict[str, Any]]:
    """One record per probe: its fields, the model's answer, the reading and its judgement."""
    out = []
    for r, text in zip(records, answers, strict=True):
        reading, fits = read_yes_no(text, parser, unparseable)
        probe = {k: v for k, v in r.items() if k != "_where"}
        out.append({"split": split, **probe, "answer": text, "read_as": reading, "fits": fits,
                    "correct": reading == r["label"]})  # fmt: skip
    return out


def run_pope(
    model: LMM,
    processor: MultimodalProcessor,
    files: list[str | Path],
    image_root: str | Path,
    gen: GenerationOptions,
    limit: int | None = None,
    parser: str = "reference",
    unparseable: str | None = None,
) -> dict[str, Any]:
    """Answer every probe and score each split.

    Args:
        files: POPE jsonl files (one per split).
        image_root: folder the records' ``image`` names are relative to.
        limit: first N probes per split (None: all).
        parser: yes/no parser: ``reference`` (POPE's rule), ``reference-exact`` or ``strict``.
        unparseable: reading of answers fitting neither pattern (None: the parser's default).

    Returns:
        ``{split: metrics}``; ``"average"`` (mean of each metric over the splits, and the summed
        counts ``n`` and ``n_unparseable`` with their ``unparseable_share``); ``parser`` and
        ``unparseable_as``; ``records`` (every answer, see :func:`pope_records`).

    Raises:
        ValueError: an unknown parser; RecordError / FileNotFoundError: a bad record or image.
    """
    unparseable_as = check_parser(parser, unparseable)
    out: dict[str, Any] = {}
    records_out: list[dict[str, Any]] = []
    for path in files:
        split = split_name(path)
        records = load_pope(path)[:limit]
        examples = [
            question(str(r["question_id"]), r["text"], media_file(image_root, r["image"], r["_where"]))
            for r in records
        ]
        answers = answer(model, processor, examples, gen, f"pope-{split}", max_new_tokens=MAX_NEW_TOKENS)
        out[split] = pope_metrics([r["label"] for r in records], answers, parser, unparseable)
        records_out += pope_records(split, records, answers, parser, unparseable)
    if out:
        splits = list(out.values())
        average: dict[str, Any] = {k: sum(m[k] for m in splits) / len(splits) for k in METRICS}
        average["n"] = sum(m["n"] for m in splits)
        average["n_unparseable"] = sum(m["n_unparseable"] for m in splits)
        average["unparseable_share"] = average["n_unparseable"] / average["n"] if average["n"] else 0.0
        out["average"] = average
    out.update(parser=parser, unparseable_as=unparseable_as, records=records_out)
    return out
