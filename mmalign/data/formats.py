"""Readers that normalise published record formats into :class:`Example`.

Only LLaVA's format is here so far: ``{id, image | video, conversations: [{from, value}]}`` in a
JSON list or JSONL (https://github.com/haotian-liu/LLaVA, ``docs/Finetune_Custom_Data.md``).
``image`` / ``video`` may be one path or a list; paths are relative to a media root.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.data.templates import ROLE_ALIASES, Message


class RecordError(ValueError):
    """A malformed record; the message names the file and the record (line or index and id)."""


@dataclass
class Example:
    """One training/eval example: media paths and a conversation of role/content messages."""

    id: str
    messages: list[Message]
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def iter_json_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, record)``: ``where`` is ``file[index]`` for a JSON list, ``file:line`` for JSONL."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    with path.open() as f:
        head = f.read(1)
        while head and head.isspace():
            head = f.read(1)
    if head == "[":
        try:
            records = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        if not isinstance(records, list):
            raise RecordError(f"{path}: a JSON data file must hold a list of records")
        for i, rec in enumerate(records):
            yield f"{path}[{i}]", rec
        return
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc


def _paths(value: object, root: Path, where: str, key: str) -> list[Path]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in items):
        raise RecordError(f"{where}: '{key}' must be a path or a list of paths")
    return [root / v for v in items]


def llava_record_to_example(rec: dict, root: Path, where: str) -> Example:
    """Convert one LLaVA record; ``where`` (file:line) prefixes every error."""
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: record is not an object")
    rid = str(rec.get("id", where))
    convs = rec.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise RecordError(f"{where} (id {rid}): missing or empty 'conversations'")
    messages: list[Message] = []
    for j, turn in enumerate(convs):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError(f"{where} (id {rid}): turn {j} needs 'from' and 'value'")
        role = ROLE_ALIASES.get(str(turn["from"]).lower())
        if role is None:
            raise RecordError(f"{where} (id {rid}): turn {j} has unknown speaker {turn['from']!r}")
        if not isinstance(turn["value"], str):
            raise RecordError(f"{where} (id {rid}): turn {j} value is not a string")
        messages.append({"role": role, "content": turn["value"]})
    return Example(
        id=rid,
        messages=messages,
        images=_paths(rec.get("image"), root, f"{where} (id {rid})", "image"),
        videos=_paths(rec.get("video"), root, f"{where} (id {rid})", "video"),
        meta={k: v for k, v in rec.items() if k not in ("id", "image", "video", "conversations")},
    )


def load_llava(path: str | Path, media_root: str | Path | None = None) -> list[Example]:
    """Load LLaVA-format records (JSON list or JSONL).

    Args:
        path: the data file.
        media_root: folder the ``image``/``video`` paths are relative to (default: the data
            file's folder).
    """
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    return [llava_record_to_example(rec, root, where) for where, rec in iter_json_records(path)]
