"""Helpers shared by the benchmarks: reading record files, asking the model about media."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmalign.data.formats import Example, RecordError, iter_json_records
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.lmm import LMM
from mmalign.training.generation import generate_responses


@dataclass
class GenerationOptions:
    """How benchmark answers are generated (greedy by default, as the benchmarks' papers do)."""

    batch_size: int = 16
    max_new_tokens: int = 128
    progress: bool = False


def read_records(
    path: str | Path, required: Sequence[str], aliases: dict[str, str] | None = None
) -> list[dict]:
    """Records of a JSON list or JSONL file, each checked for ``required`` keys.

    Args:
        aliases: ``{alias: canonical}``; an alias is renamed when the canonical key is absent
            (e.g. ``video_name`` → ``video``).

    Raises:
        RecordError: a record that is not an object or lacks a key; the message names file and record.
    """
    out = []
    for where, rec in iter_json_records(path):
        if not isinstance(rec, dict):
            raise RecordError(f"{where}: record is not an object")
        for alias, key in (aliases or {}).items():
            if key not in rec and alias in rec:
                rec[key] = rec[alias]
        missing = [k for k in required if k not in rec]
        if missing:
            raise RecordError(f"{where}: missing {missing} (has {sorted(rec)})")
        rec["_where"] = where
        out.append(rec)
    return out


def media_file(root: str | Path, name: str, where: str) -> Path:
    """``root / name``, which must exist; the error names the record."""
    path = Path(root) / name
    if not path.is_file():
        raise FileNotFoundError(f"{where}: media file not found: {path}")
    return path


def question(qid: str, text: str, image: Path | None = None, video: Path | None = None) -> Example:
    """A one-turn example asking ``text`` about one image or video (placeholder first, as LLaVA)."""
    tag = "<image>\n" if image is not None else "<video>\n" if video is not None else ""
    return Example(
        id=qid,
        messages=[{"role": "user", "content": f"{tag}{text}"}],
        images=[image] if image is not None else [],
        videos=[video] if video is not None else [],
    )


def answer(
    model: LMM,
    processor: MultimodalProcessor,
    examples: list[Example],
    gen: GenerationOptions,
    desc: str,
    **kw: Any,
) -> list[str]:
    """Batched, KV-cached greedy answers (:func:`~mmalign.training.generation.generate_responses`)."""
    if not examples:
        return []
    return generate_responses(
        model,
        processor,
        examples,
        batch_size=gen.batch_size,
        max_new_tokens=kw.pop("max_new_tokens", gen.max_new_tokens),
        progress=gen.progress,
        desc=desc,
        **kw,
    )


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no values."""
    return sum(values) / len(values) if values else 0.0
