"""Readers for preference records as published, normalised into :class:`PreferencePair`.

* ``povid`` — POVID (https://github.com/YiyangZhou/POVID):
  ``{id, image, conversations: [human, gpt], rejected_conversations: [human, gpt]}``.
* ``llava_rlhf`` — LLaVA-RLHF human preferences (https://github.com/llava-rlhf/LLaVA-RLHF):
  ``{id, image, conversations, output_1: {value}, output_2: {value}, preference: 1 | 2}``; a
  trailing ``gpt`` turn in ``conversations`` is ignored (the compared answers are the outputs).
* ``hound`` — LLaVA-Hound DPO (https://github.com/RifleZhang/LLaVA-Hound-DPO):
  ``{id, prompt, chosen, rejected, video}``; ``<video>`` is prepended when the prompt has none.
* ``trl`` — TRL's vision preference datasets: ``{prompt, chosen, rejected, images}``; prompt and
  answers are strings or conversational message lists (content as a string or as typed parts
  ``{"type": "image"} / {"type": "text", "text": ...}``); ``<image>`` is prepended per image when
  the prompt has no placeholder.

Every malformed record raises :class:`~mmalign.data.formats.RecordError` naming ``file:line``
(the line the record starts on, also in a JSON list) and the record id. Identical answers,
placeholders in answers, media counts and files, and lengths are checked at load time by
:func:`mmalign.data.check.check_dataset`. Fields a reader does not consume (e.g.
``captions``, ``answer`` for factual augmentation) are kept in ``meta``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmalign.data.formats import RecordError, _paths, iter_json_records
from mmalign.data.templates import ROLE_ALIASES, Message

Format = Literal["auto", "povid", "llava_rlhf", "hound", "trl"]
FORMATS = ("povid", "llava_rlhf", "hound", "trl")


@dataclass
class PreferencePair:
    """A prompt (conversation ending with a user turn), a chosen and a rejected answer, media.

    ``where`` is the record's ``file:line`` ("" when built in code).
    """

    id: str
    prompt: list[Message]
    chosen: str
    rejected: str
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""


def detect_format(rec: dict) -> str | None:
    """The format a record's keys identify (None if none does)."""
    if "rejected_conversations" in rec:
        return "povid"
    if "output_1" in rec and "output_2" in rec:
        return "llava_rlhf"
    if {"prompt", "chosen", "rejected"} <= set(rec):
        return "hound" if "video" in rec else "trl"
    return None


def _turns(convs: Any, where: str) -> list[Message]:
    if not isinstance(convs, list) or not convs:
        raise RecordError(f"{where}: conversations must be a non-empty list")
    out: list[Message] = []
    for j, turn in enumerate(convs):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError(f"{where}: turn {j} needs 'from' and 'value'")
        role = ROLE_ALIASES.get(str(turn["from"]).lower())
        if role is None:
            raise RecordError(f"{where}: turn {j} has unknown speaker {turn['from']!r}")
        if not isinstance(turn["value"], str):
            raise RecordError(f"{where}: turn {j} value is not a string")
        out.append({"role": role, "content": turn["value"]})
    return out


def _split_last_answer(messages: list[Message], where: str, key: str) -> tuple[list[Message], str]:
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise RecordError(f"{where}: '{key}' must end with an assistant (gpt) turn after a user turn")
    return messages[:-1], messages[-1]["content"]


def _check_prompt(prompt: list[Message], where: str) -> list[Message]:
    if not prompt or prompt[-1]["role"] != "user":
        raise RecordError(f"{where}: the prompt must end with a user (human) turn")
    return prompt


def _povid(rec: dict, root: Path, where: str) -> tuple[list[Message], str, str, dict]:
    prompt, chosen = _split_last_answer(_turns(rec.get("conversations"), where), where, "conversations")
    rej_prompt, rejected = _split_last_answer(
        _turns(rec.get("rejected_conversations"), where), where, "rejected_conversations"
    )
    if rej_prompt != prompt:
        raise RecordError(f"{where}: conversations and rejected_conversations differ before the last turn")
    return prompt, chosen, rejected, {"image": rec.get("image"), "video": rec.get("video")}


def _output(rec: dict, key: str, where: str) -> str:
    out = rec.get(key)
    value = out.get("value") if isinstance(out, dict) else out
    if not isinstance(value, str):
        raise RecordError(f"{where}: '{key}' must be {{'value': str}} or a string")
    return value


def _llava_rlhf(rec: dict, root: Path, where: str) -> tuple[list[Message], str, str, dict]:
    messages = _turns(rec.get("conversations"), where)
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    pref = rec.get("preference")
    if pref not in (1, 2, "1", "2"):
        raise RecordError(f"{where}: 'preference' must be 1 or 2, got {pref!r}")
    a, b = _output(rec, "output_1", where), _output(rec, "output_2", where)
    chosen, rejected = (a, b) if int(pref) == 1 else (b, a)
    return messages, chosen, rejected, {"image": rec.get("image"), "video": rec.get("video")}


def _content_text(content: Any, where: str, placeholder: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RecordError(f"{where}: message content must be a string or a list of parts")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind in ("image", "video"):
            parts.append(placeholder if kind == "image" else "<video>")
        else:
            raise RecordError(f"{where}: unknown content part {part!r}")
    return "\n".join(parts)


def _messages(value: Any, where: str, key: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": "user" if key == "prompt" else "assistant", "content": value}]
    if not isinstance(value, list) or not value:
        raise RecordError(f"{where}: '{key}' must be a string or a non-empty list of messages")
    out: list[Message] = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RecordError(f"{where}: {key}[{j}] needs 'role' and 'content'")
        role = ROLE_ALIASES.get(str(m["role"]).lower())
        if role is None:
            raise RecordError(f"{where}: {key}[{j}] has unknown role {m['role']!r}")
        out.append({"role": role, "content": _content_text(m["content"], f"{where}: {key}[{j}]", "<image>")})
    return out


def _answer(value: Any, where: str, key: str) -> str:
    msgs = _messages(value, where, key)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise RecordError(f"{where}: '{key}' must be one assistant answer")
    return msgs[0]["content"]


def _prompt_answers(rec: dict, where: str, media_key: str) -> tuple[list[Message], str, str, dict]:
    prompt = _messages(rec.get("prompt"), where, "prompt")
    chosen, rejected = (
        _answer(rec.get("chosen"), where, "chosen"),
        _answer(rec.get("rejected"), where, "rejected"),
    )
    return prompt, chosen, rejected, {"image": rec.get("images", rec.get("image")), "video": rec.get("video")}


def _prepend_placeholders(prompt: list[Message], token: str, count: int) -> list[Message]:
    if count == 0 or any(token in m["content"] for m in prompt):
        return prompt
    first = prompt[0]
    return [{"role": first["role"], "content": (token + "\n") * count + first["content"]}, *prompt[1:]]


READERS = {
    "povid": _povid,
    "llava_rlhf": _llava_rlhf,
    "hound": lambda rec, root, where: _prompt_answers(rec, where, "video"),
    "trl": lambda rec, root, where: _prompt_answers(rec, where, "images"),
}
CONSUMED = {
    "povid": {"id", "image", "video", "conversations", "rejected_conversations"},
    "llava_rlhf": {"id", "image", "video", "conversations", "output_1", "output_2", "preference"},
    "hound": {"id", "prompt", "chosen", "rejected", "video", "image", "images"},
    "trl": {"id", "prompt", "chosen", "rejected", "images", "image", "video"},
}


def record_to_pair(rec: Any, root: Path, where: str, fmt: Format = "auto") -> PreferencePair:
    """Convert one record; ``where`` (``file:line``) prefixes every error."""
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: record is not an object")
    rid = str(rec.get("id", where))
    at = f"{where} (id {rid})"
    kind = detect_format(rec) if fmt == "auto" else fmt
    if kind not in READERS:
        raise RecordError(
            f"{at}: cannot tell the preference format from keys {sorted(rec)}; "
            f"expected one of {FORMATS} (or pass the format)"
        )
    prompt, chosen, rejected, media = READERS[kind](rec, root, at)
    images = _paths(media["image"], root, at, "image")
    videos = _paths(media["video"], root, at, "video")
    prompt = _prepend_placeholders(prompt, "<image>", len(images))
    prompt = _prepend_placeholders(prompt, "<video>", len(videos))
    _check_prompt(prompt, at)
    if not chosen.strip() or not rejected.strip():
        raise RecordError(f"{at}: empty chosen or rejected answer")
    meta = {k: v for k, v in rec.items() if k not in CONSUMED[kind]}
    meta["format"] = kind
    return PreferencePair(rid, prompt, chosen, rejected, images, videos, meta, where)


def load_preferences(
    path: str | Path, fmt: Format = "auto", media_root: str | Path | None = None
) -> list[PreferencePair]:
    """Load preference records (JSON list or JSONL) of one format (``auto``: per record by its keys).

    Args:
        path: the data file.
        fmt: ``auto``, ``povid``, ``llava_rlhf``, ``hound`` or ``trl``.
        media_root: folder media paths are relative to (default: the data file's folder).
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; one of auto, {', '.join(FORMATS)}")
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    return [record_to_pair(rec, root, where, fmt) for where, rec in iter_json_records(path)]
