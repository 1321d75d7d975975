"""Helpers shared by the benchmarks: reading record files, asking the model about media, naming models."""

from __future__ import annotations

import re
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


# folder names that say where in a run a checkpoint sits, not which run it is
_GENERIC_DIR = re.compile(
    r"(final|final_llava_hf|last|latest|best|model|models|hf|export|checkpoints?|"
    r"(step|checkpoint|ckpt|epoch|iter|global_step)[-_]?\d+|\d+)",
    re.IGNORECASE,
)


def model_name_from_path(path: str | Path, parents: int = 0) -> str:
    """A checkpoint's display name from its path: the folder name, with its parent folders while
    the name is generic (``runs/dpo/final`` → ``dpo/final``, ``runs/dpo/checkpoints/step_000100`` →
    ``checkpoints/step_000100``), plus ``parents`` more."""
    parts = Path(path).resolve().parts[1:] or ("/",)
    k = 1
    while k < len(parts) and _GENERIC_DIR.fullmatch(parts[-k]):
        k += 1
    return "/".join(parts[-min(len(parts), k + parents) :])


def parse_model_specs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """``NAME=DIR`` or ``DIR`` per model → ``[(name, dir)]`` with distinct names.

    A spec naming an existing folder is a ``DIR`` even if it holds ``=``. A ``DIR`` is named by
    :func:`model_name_from_path`, taking more parent folders while two names clash (the same
    folder twice gets ``#2``).

    Raises:
        ValueError: an empty name or folder, a name that is an absolute path or holds ``..``, or
            one name given to two models.
    """
    given: list[tuple[str | None, Path]] = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or Path(spec).is_dir():
            given.append((None, Path(spec)))
            continue
        if not name.strip() or not folder.strip():
            raise ValueError(f"--model {spec!r}: expected NAME=DIR or DIR")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"--model {spec!r}: the name must not be an absolute path or hold '..'")
        given.append((name.strip(), Path(folder)))
    names = [n for n, _ in given if n is not None]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--model: the name(s) {twice} are given to more than one model")
    resolved = [folder.resolve() for _, folder in given]
    extra = [0] * len(given)
    out = [n if n is not None else model_name_from_path(f) for n, f in given]

    def clashes(i: int) -> bool:
        return any(out[j] == out[i] and resolved[j] != resolved[i] for j in range(len(out)) if j != i)

    while True:
        grow = [i for i, (n, _) in enumerate(given) if n is None and clashes(i)]
        grow = [i for i in grow if model_name_from_path(given[i][1], extra[i] + 1) != out[i]]
        if not grow:
            break
        for i in grow:
            extra[i] += 1
            out[i] = model_name_from_path(given[i][1], extra[i])
    seen: dict[str, int] = {}
    labels = []
    for label in out:
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return [(label, folder) for label, (_, folder) in zip(labels, given, strict=True)]
