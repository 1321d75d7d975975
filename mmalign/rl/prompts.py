"""RL prompts: the question, its media and the facts the factually augmented reward needs.

LLaVA-RLHF (Sun et al., 2023, https://arxiv.org/abs/2309.14525; code
https://github.com/llava-rlhf/LLaVA-RLHF) trains PPO on prompt records
``{id, image, conversations, caption_type?, length_bonus?}``
(``RLHF/data_utils/data_utils_ppo.py``, ``QueryResponseDataset``) plus one
``image_to_caption.json`` mapping an image file name to its ground-truth captions
(``--image_to_caption_file`` in ``RLHF/scripts/*/train_rl_model.sh``). Their code, and what
:func:`load_prompts` takes from it:

* ``caption_type`` is :class:`AnswerType` of ``RLHF/data_utils/constants.py``: 1 general, 2–5 the
  true option is A–D, 6 the true answer is "no", 7 it is "yes"; absent means 1.
* ``length_bonus`` multiplies the length term of the reward (absent means 1.0).
* Captions are looked up (``RLHF/models/ppo_trainer.py``, ``rollout``) under
  ``str(int(stem)).zfill(12) + ".jpg"`` of the image file — the COCO train2017 name — and, for
  multiple-choice items (types 2–5, A-OKVQA), under ``"aok_" + <that name>``. Here the key is
  the media file's name as written, then (for a numeric stem) that zero-padded name; with the
  ``aok_`` prefix for every multiple-choice prompt.
* Only the first exchange of ``conversations`` is used and its ``gpt`` answer is dropped
  (``_s = [__s[:2] for __s in _s]``). Departure: here the prompt is the whole conversation up to
  and including its *last* user turn (a trailing assistant turn is dropped), so multi-turn
  records keep their context.

Our own LLaVA records (``{id, image | video, conversations}``; ShapeWorld prompt records are
written this way) may carry the facts directly: ``captions`` (a list of strings) and ``answer``
(or ``gt_answer``, as :func:`mmalign.preference.reward_model.reward_suffix` reads). A record's
own ``captions`` win over the caption file.

``kind`` (which decides the correctness bonus, :func:`mmalign.rl.rewards.correctness`):
``caption_type`` when present (LLaVA-RLHF's labels; an ``answer`` contradicting it is an error);
otherwise from the answer: ``yes``/``no`` (any case, trailing ``.``) → ``yes_no``; a letter
``A``–``D`` (``B``, ``B.``, ``(B)``) that the last user turn lists as an option on a line of its
own (``B. dog``, ``(B) dog``, ``B) dog``, as A-OKVQA prompts do) → ``multiple_choice``;
anything else, or no answer → ``open``. ``answer`` is stored normalised (``yes``/``no``, the
letter) for those two kinds, verbatim otherwise.

Every malformed record raises :class:`~mmalign.data.formats.RecordError` naming ``file:line``
and the record id. Missing facts are not an error at load time: :func:`check_facts` decides,
once the trainer knows whether its reward prompt needs them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmalign.data.formats import Example, RecordError, iter_json_records, llava_record_to_example
from mmalign.data.templates import Message

Kind = Literal["multiple_choice", "yes_no", "open"]
KINDS = ("multiple_choice", "yes_no", "open")
LETTERS = ("A", "B", "C", "D")
AOK_PREFIX = "aok_"  # LLaVA-RLHF's caption key prefix for A-OKVQA (multiple-choice) items

# LLaVA-RLHF's AnswerType (RLHF/data_utils/constants.py) → (kind, true answer)
CAPTION_TYPES: dict[int, tuple[Kind, str | None]] = {
    1: ("open", None),
    2: ("multiple_choice", "A"),
    3: ("multiple_choice", "B"),
    4: ("multiple_choice", "C"),
    5: ("multiple_choice", "D"),
    6: ("yes_no", "no"),
    7: ("yes_no", "yes"),
}
_CONSUMED = ("captions", "answer", "gt_answer", "caption_type", "length_bonus")
_LETTER_ANSWER = re.compile(r"^\(?([A-D])\)?\.?$")


@dataclass
class RLPrompt:
    """One PPO prompt: the conversation to continue, its media, and the reward's facts.

    Attributes:
        id: the record id (seeds the per-rollout caption shuffle).
        prompt: the conversation up to and including its last user turn.
        images: image paths (resolved against the media root).
        videos: video paths.
        captions: ground-truth captions for the reward prompt (None: unknown).
        answer: the true answer — a letter ``A``–``D``, ``yes``/``no``, or free text (None: unknown).
        kind: ``multiple_choice`` / ``yes_no`` / ``open``; decides the correctness bonus.
        length_bonus: multiplier of the length term (LLaVA-RLHF's per-record ``length_bonus``).
        where: ``file:line`` of the record ("" when built in code).
        meta: the record's other fields.

    Raises:
        ValueError: an unknown kind, an answer that does not fit the kind, or a negative or
            non-finite length_bonus.
    """

    id: str
    prompt: list[Message]
    images: list[Path]
    videos: list[Path]
    captions: list[str] | None
    answer: str | None
    kind: Kind
    length_bonus: float = 1.0
    where: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        at = f"{self.where or 'prompt'} (id {self.id})"
        if self.kind not in KINDS:
            raise ValueError(f"{at}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "multiple_choice" and self.answer not in LETTERS:
            raise ValueError(f"{at}: a multiple-choice answer must be one of {LETTERS}, got {self.answer!r}")
        if self.kind == "yes_no" and self.answer not in ("yes", "no"):
            raise ValueError(f"{at}: a yes/no answer must be 'yes' or 'no', got {self.answer!r}")
        if not math.isfinite(self.length_bonus) or self.length_bonus < 0:
            raise ValueError(f"{at}: length_bonus must be finite and >= 0, got {self.length_bonus}")

    def to_example(self) -> Example:
        """The prompt as an :class:`~mmalign.data.formats.Example` for ``MultimodalProcessor.encode_prompt``."""
        return Example(
            id=self.id,
            messages=[dict(m) for m in self.prompt],
            images=list(self.images),
            videos=list(self.videos),
            meta=dict(self.meta),
            where=self.where,
        )


def load_captions(path: str | Path) -> dict[str, list[str]]:
    """Read LLaVA-RLHF's ``image_to_caption.json``: ``{file name: [caption, ...]}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a JSON object of non-empty string lists (names the file and the key).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"caption file not found: {path}")
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    return _check_mapping(mapping, str(path))


def _check_mapping(mapping: Any, name: str) -> dict[str, list[str]]:
    if not isinstance(mapping, dict):
        raise ValueError(f"{name}: captions must map a file name to a list of captions")
    for key, value in mapping.items():
        if not _is_captions(value):
            raise ValueError(f"{name}: key {key!r}: captions must be a non-empty list of strings")
    return mapping


def _is_captions(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(c, str) and c for c in value)


def _normalise_answer(answer: str) -> tuple[Kind | None, str]:
    """``("yes_no", "yes"|"no")``, ``("multiple_choice", letter)`` when a letter, else ``(None, answer)``."""
    text = answer.strip()
    if text.rstrip(".!").lower() in ("yes", "no"):
        return "yes_no", text.rstrip(".!").lower()
    match = _LETTER_ANSWER.match(text)
    if match:
        return "multiple_choice", match.group(1)
    return None, answer


def lists_option(question: str, letter: str) -> bool:
    """The question lists option ``letter`` on a line of its own (``B. red``, ``(B) red``, ``B) red``)."""
    return re.search(rf"(?m)^\s*(?:\({letter}\)|{letter}[.)])\s*\S", question) is not None


def _kind_and_answer(rec: dict, question: str, at: str) -> tuple[Kind, str | None]:
    """The rule: ``caption_type`` when present (LLaVA-RLHF's labels win); else from the answer:
    yes/no → yes_no; a letter A–D that the question lists as an option → multiple_choice;
    anything else (or no answer) → open."""
    answer = rec.get("answer", rec.get("gt_answer"))
    if answer is not None and not (isinstance(answer, str) and answer.strip()):
        raise RecordError(f"{at}: 'answer' must be a non-empty string")
    ctype = rec.get("caption_type")
    if ctype is not None:
        if isinstance(ctype, bool) or not isinstance(ctype, int) or ctype not in CAPTION_TYPES:
            raise RecordError(
                f"{at}: caption_type must be an integer 1-7 (LLaVA-RLHF's AnswerType), got {ctype!r}"
            )
        kind, truth = CAPTION_TYPES[ctype]
        if truth is None:
            return kind, answer
        if answer is not None and _normalise_answer(answer)[1] != truth:
            raise RecordError(
                f"{at}: answer {answer!r} contradicts caption_type {ctype} (true answer {truth!r})"
            )
        return kind, truth
    if answer is None:
        return "open", None
    kind, norm = _normalise_answer(answer)
    if kind == "yes_no" or (kind == "multiple_choice" and lists_option(question, norm)):
        return kind, norm
    return "open", answer


def _caption_keys(names: list[str], kind: Kind) -> list[list[str]]:
    """Keys to try per media file: its name, then (numeric stem) the 12-digit COCO name."""
    prefix = AOK_PREFIX if kind == "multiple_choice" else ""
    keys = []
    for name in names:
        tried = [prefix + name]
        stem = Path(name).stem
        if stem.isdigit() and f"{int(stem):012d}.jpg" != name:
            tried.append(f"{prefix}{int(stem):012d}.jpg")
        keys.append(tried)
    return keys


def _lookup(mapping: dict[str, list[str]], keys: list[list[str]]) -> list[str] | None:
    found: list[str] = []
    for tried in keys:
        hit = next((mapping[k] for k in tried if k in mapping), None)
        if hit is None:
            return None
        found.extend(hit)
    return found or None


def _media_names(rec: dict) -> list[str]:
    names = []
    for key in ("image", "video"):
        value = rec.get(key)
        for v in value if isinstance(value, list) else [value] if value is not None else []:
            names.append(Path(v).name)
    return names


def record_to_prompt(
    rec: Any, root: Path, where: str, captions: dict[str, list[str]] | None = None
) -> RLPrompt:
    """Convert one prompt record; errors name ``where`` (file:line) and the id.

    Raises:
        RecordError: a malformed record.
    """
    ex = llava_record_to_example(rec, root, where)  # checks the object, conversations and media
    at = f"{where} (id {ex.id})"
    last_user = max((i for i, m in enumerate(ex.messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise RecordError(f"{at}: the conversation has no user (human) turn")
    prompt = ex.messages[: last_user + 1]
    kind, answer = _kind_and_answer(rec, prompt[-1]["content"], at)
    bonus = rec.get("length_bonus", 1.0)
    if (
        isinstance(bonus, bool)
        or not isinstance(bonus, (int, float))
        or not math.isfinite(bonus)
        or bonus < 0
    ):
        raise RecordError(f"{at}: length_bonus must be a finite number >= 0, got {bonus!r}")
    meta = {k: v for k, v in ex.meta.items() if k not in _CONSUMED}
    own = rec.get("captions")
    if own is not None:
        if not _is_captions(own):
            raise RecordError(f"{at}: 'captions' must be a non-empty list of strings")
        facts: list[str] | None = list(own)
    elif captions is not None and _media_names(rec):
        keys = _caption_keys(_media_names(rec), kind)
        facts = _lookup(captions, keys)
        if facts is None:
            meta["caption_keys_tried"] = [k for tried in keys for k in tried]
    else:
        facts = None
    try:
        return RLPrompt(
            id=ex.id,
            prompt=prompt,
            images=ex.images,
            videos=ex.videos,
            captions=facts,
            answer=answer,
            kind=kind,
            length_bonus=float(bonus),
            where=where,
            meta=meta,
        )
    except ValueError as exc:
        raise RecordError(str(exc)) from exc


def load_prompts(
    path: str | Path,
    captions: str | Path | dict[str, list[str]] | None = None,
    media_root: str | Path | None = None,
) -> list[RLPrompt]:
    """Load PPO prompts (JSON list or JSONL): LLaVA-RLHF's prompt records or our LLaVA records.

    Args:
        path: the prompt file.
        captions: LLaVA-RLHF's ``image_to_caption.json`` (a path, or the dict itself), looked up
            by media file name (module docstring) for records without their own ``captions``.
        media_root: folder the media paths are relative to (default: the prompt file's folder).

    Returns:
        One :class:`RLPrompt` per record, in file order.

    Raises:
        FileNotFoundError: no prompt or caption file.
        RecordError: the first malformed record (names ``file:line`` and its id).
        ValueError: a malformed caption mapping.
    """
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    mapping: dict[str, list[str]] | None = None
    if isinstance(captions, dict):
        mapping = _check_mapping(captions, "captions")
    elif captions is not None:
        mapping = load_captions(captions)
    return [record_to_prompt(rec, root, where, mapping) for where, rec in iter_json_records(path)]


def check_facts(
    prompts: list[RLPrompt],
    need_captions: bool,
    need_answer: bool = False,
    on_missing: Literal["error", "skip"] = "error",
) -> tuple[list[RLPrompt], list[str]]:
    """Keep the prompts that carry the facts the reward prompt needs.

    Args:
        prompts: the loaded prompts.
        need_captions: the reward prompt template has ``{captions}``.
        need_answer: the template has ``{answer}``.
        on_missing: ``error`` (raise on the first prompt lacking a fact) or ``skip`` (drop it).

    Returns:
        ``(kept, skipped_ids)``.

    Raises:
        ValueError: ``on_missing`` is neither value; or, with ``error``, a prompt lacks a needed
            fact (names its ``file:line``, id, and what is missing).
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    kept: list[RLPrompt] = []
    skipped: list[str] = []
    for p in prompts:
        missing = []
        if need_captions and not p.captions:
            tried = p.meta.get("caption_keys_tried")
            missing.append("captions" + (f" (no caption-file key among {tried})" if tried else ""))
        if need_answer and p.answer is None:
            missing.append("an answer")
        if not missing:
            kept.append(p)
        elif on_missing == "skip":
            skipped.append(p.id)
        else:
            raise ValueError(
                f"{p.where or 'prompt'} (id {p.id}): the reward prompt needs {' and '.join(missing)}, "
                "which the record lacks (give the record 'captions' / 'answer', a caption file, "
                "or on_missing='skip')"
            )
    return kept, skipped
