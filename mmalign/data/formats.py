"""Readers that normalise published record formats into :class:`Example`.

* ``llava`` — LLaVA (https://github.com/haotian-liu/LLaVA, ``docs/Finetune_Custom_Data.md``):
  ``{id, image | video, conversations: [{from, value}]}``. ``image`` / ``video`` may be one path
  or a list; paths are relative to a media root.
* ``lrv`` — LRV-Instruction as released (https://github.com/FuxiaoLiu/LRV-Instruction):
  ``{image_id, question, answer, task}``; the image is ``<media_root>/<image_id>.jpg`` (an
  ``image`` field, as mmalign's LRV builder writes, wins). The question gets ``<image>\\n``
  prepended when it has no placeholder. The released ``filter_cap.json`` is
  ``{"annotations": [...]}`` (MiniGPT-4's layout); a JSON list or JSONL works too.
* ``auto`` — per record, by its keys (``conversations`` → llava, ``question``/``answer`` → lrv).

Files are a JSON list, JSONL, or a JSON object whose ``annotations`` (or ``data``) key holds the
list. Every record is located as ``file:line`` — the line where the record starts, also in a JSON
list (``file:line:column`` when several records start on one line) — and every error names it
and the record id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmalign.data.templates import ROLE_ALIASES, Message

RecordFormat = Literal["auto", "llava", "lrv"]
RECORD_FORMATS = ("llava", "lrv")
LIST_KEYS = ("annotations", "data")  # a top-level object holding the record list under one of these


class RecordError(ValueError):
    """A malformed record; the message names the file and the record (``file:line`` and id)."""


@dataclass
class Example:
    """One training/eval example: media paths and a conversation of role/content messages.

    Attributes:
        where: ``file:line`` of the record it was read from ("" when built in code).
    """

    id: str
    messages: list[Message]
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""


_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


def _skip(text: str, pos: int, path: Path) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    if pos >= len(text):
        raise RecordError(f"{path}: unexpected end of the JSON file")
    return pos


def _json_error(text: str, pos: int, path: Path, what: str) -> RecordError:
    line = text.count("\n", 0, pos) + 1
    return RecordError(f"{path}:{line}: invalid JSON: {what}")


def _list_start(text: str, path: Path) -> int:
    """Position just after the ``[`` of the record list (top level, or under a LIST_KEYS key)."""
    pos = _skip(text, 0, path)
    if text[pos] == "[":
        return pos + 1
    if text[pos] != "{":
        raise _json_error(text, pos, path, "a JSON data file must hold a list of records")
    pos = _skip(text, pos + 1, path)
    while text[pos] != "}":
        try:
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip(text, pos, path)
            if text[pos] != ":":
                raise _json_error(text, pos, path, "expected ':'")
            pos = _skip(text, pos + 1, path)
            if key in LIST_KEYS and text[pos] == "[":
                return pos + 1
            _, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _json_error(text, exc.pos, path, exc.msg) from exc
        pos = _skip(text, pos, path)
        if text[pos] == ",":
            pos = _skip(text, pos + 1, path)
    raise RecordError(f"{path}: a JSON object data file must hold its records under one of {LIST_KEYS}")


def _iter_json_list(path: Path) -> Iterator[tuple[str, Any]]:
    text = path.read_text()
    pos = _skip(text, _list_start(text, path), path)
    starts: list[tuple[int, int, Any]] = []  # (line, column, record)
    line, last, line_start = 1, 0, 0
    while text[pos] != "]":
        try:
            rec, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _json_error(text, exc.pos, path, exc.msg) from exc
        line += text.count("\n", last, pos)
        line_start = max(line_start, text.rfind("\n", last, pos) + 1)  # scans this gap only: O(file)
        last = pos
        starts.append((line, pos - line_start + 1, rec))
        pos = _skip(text, end, path)
        if text[pos] == ",":
            pos = _skip(text, pos + 1, path)
        elif text[pos] != "]":
            raise _json_error(text, pos, path, "expected ',' or ']' after a record")
    per_line: dict[int, int] = {}
    for ln, _, _ in starts:
        per_line[ln] = per_line.get(ln, 0) + 1
    for ln, col, rec in starts:
        yield (f"{path}:{ln}" if per_line[ln] == 1 else f"{path}:{ln}:{col}"), rec


def iter_json_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, record)`` per record of a JSON list / object-with-list / JSONL file.

    ``where`` is ``file:line`` of the line the record starts on (``file:line:column`` when
    several records of a JSON list share a line, as in a one-line file).

    Raises:
        FileNotFoundError: no such file.
        RecordError: invalid JSON (naming ``file:line``), or a JSON value that is not a list
            of records.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    with path.open() as f:
        head = f.read(1)
        while head and head.isspace():
            head = f.read(1)
    if head == "[" or (head == "{" and not _is_jsonl(path)):
        yield from _iter_json_list(path)
        return
    with path.open() as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc


def _is_jsonl(path: Path) -> bool:
    """A file starting with ``{`` is JSONL unless it is one object holding the list (LIST_KEYS)."""
    with path.open() as f:
        first = f.readline()
        try:
            obj = json.loads(first)
        except json.JSONDecodeError:
            return False  # a pretty-printed object spans several lines
        wrapper = isinstance(obj, dict) and any(isinstance(obj.get(k), list) for k in LIST_KEYS)
        return not (wrapper and not f.read(4096).strip())


def _paths(value: object, root: Path, where: str, key: str) -> list[Path]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in items):
        raise RecordError(f"{where}: '{key}' must be a path or a list of paths")
    return [root / v for v in items]


def llava_record_to_example(rec: Any, root: Path, where: str) -> Example:
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
        where=where,
    )


def lrv_record_to_example(rec: Any, root: Path, where: str) -> Example:
    """Convert one LRV-Instruction record ``{image_id, question, answer, task}`` into a 2-turn example.

    The image is ``root/<image_id>.jpg`` unless the record has an ``image`` field (a path, or
    null for none); ``<image>\\n`` is prepended to the question when it has no placeholder.
    """
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: record is not an object")
    image_id = rec.get("image_id")
    rid = str(rec.get("id", image_id if image_id is not None else where))
    at = f"{where} (id {rid})"
    question, answer = rec.get("question"), rec.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        raise RecordError(f"{at}: an LRV record needs string 'question' and 'answer'")
    if "image" in rec:  # an explicit path (mmalign's LRV builder), or null for a text-only record
        images = _paths(rec["image"], root, at, "image")
    elif isinstance(image_id, (str, int)) and str(image_id):
        images = [root / f"{image_id}.jpg"]
    else:
        raise RecordError(f"{at}: an LRV record needs an 'image_id' (or an 'image' path)")
    if "<image>" not in question:
        question = "<image>\n" * len(images) + question
    return Example(
        id=rid,
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        images=images,
        meta={k: v for k, v in rec.items() if k not in ("id", "image", "question", "answer")},
        where=where,
    )


READERS = {"llava": llava_record_to_example, "lrv": lrv_record_to_example}


def detect_record_format(rec: Any) -> str | None:
    """``llava`` (has ``conversations``), ``lrv`` (has ``question`` and ``answer``) or None."""
    if not isinstance(rec, dict):
        return None
    if "conversations" in rec:
        return "llava"
    if "question" in rec and "answer" in rec:
        return "lrv"
    return None


def record_to_example(rec: Any, root: Path, where: str, fmt: RecordFormat = "auto") -> Example:
    """Convert one record of format ``fmt`` (``auto``: by its keys); errors name ``where`` and the id."""
    kind = detect_record_format(rec) if fmt == "auto" else fmt
    if kind not in READERS:
        keys = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise RecordError(
            f"{where}: cannot tell the record format from keys {keys}; expected LLaVA "
            "({id, image, conversations}) or LRV ({image_id, question, answer}), or pass the format"
        )
    return READERS[kind](rec, root, where)


def load_records(
    path: str | Path, media_root: str | Path | None = None, fmt: RecordFormat = "auto"
) -> list[Example]:
    """Load SFT records (LLaVA or LRV; JSON list, JSON object with a list, or JSONL).

    Args:
        path: the data file.
        media_root: folder the media paths (LRV: ``<image_id>.jpg``) are relative to (default:
            the data file's folder).
        fmt: ``llava``, ``lrv`` or ``auto`` (per record, by its keys).

    Raises:
        RecordError: the first malformed record, naming ``file:line`` and its id.
    """
    if fmt != "auto" and fmt not in RECORD_FORMATS:
        raise ValueError(f"unknown record format {fmt!r}; one of auto, {', '.join(RECORD_FORMATS)}")
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    return [record_to_example(rec, root, where, fmt) for where, rec in iter_json_records(path)]


def load_llava(path: str | Path, media_root: str | Path | None = None) -> list[Example]:
    """Load LLaVA-format records (JSON list or JSONL); see :func:`load_records`."""
    return load_records(path, media_root, "llava")
