"""Record checks, run once over the whole data set when it is loaded — before any training step.

Every trainer (``train/sft.py``, ``train/dpo.py``, ``train/reward.py``) calls
:func:`check_dataset` right after loading, before DeepSpeed starts; ``python -m mmalign.data
check FILE --model DIR`` runs the same checks and prints the report; the data builders run the
structural ones (:func:`check_record`) on every record they write. Each finding names the record's
``file:line`` and id. Checks, in order (a record reports its first finding):

Invalid records (the data is wrong):

* ``malformed`` — not readable as its format (missing fields, unknown speaker …);
* ``roles`` — turns do not alternate user/assistant starting with the user (one leading system
  turn allowed); an SFT conversation ends on an unanswered user turn; a prompt does not end with
  a user turn;
* ``empty_answer`` — no assistant turn, or an empty / whitespace-only one;
* ``placeholder_in_answer`` — ``<image>`` / ``<video>`` inside an assistant turn or answer;
* ``media_count`` — placeholders in the text ≠ media items of the record;
* ``media_missing`` / ``media_unreadable`` — a media file that does not exist, or whose header
  is not an image (PIL) / a video container; a video that is a folder of frames must hold only
  image files, at least one, the first (in natural name order) with a readable image header;
* ``identical_pair`` — chosen and rejected are the same answer (up to whitespace);
* ``encode`` — the model's processor cannot tokenise the record.

Records this run cannot train (the record is fine; ``max_length`` is too small for it):

* ``too_long`` — truncation to ``max_length`` would cut media tokens (or the whole answer
  segment of a pair);
* ``no_targets`` — truncation leaves no answer token to train on;
* ``identical_after_truncation`` — chosen and rejected are identical once truncated.

Policy (``data_checks`` in the trainers' configs): ``strict`` — any finding is an error;
``skip`` (default) — invalid records are an error, records this run cannot train are skipped,
counted and listed; ``skip_invalid`` — every finding is a counted, listed skip. A data set left
with no record is always an error.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from mmalign.data.formats import Example, RecordError, record_to_example
from mmalign.data.media import MAX_IMAGE_PIXELS, MediaError, check_image_size, frame_files
from mmalign.data.templates import Message
from mmalign.utils import IGNORE_INDEX

Policy = Literal["strict", "skip", "skip_invalid"]
POLICIES: tuple[str, ...] = ("strict", "skip", "skip_invalid")
UNFIT = frozenset({"too_long", "no_targets", "identical_after_truncation"})
# Leading bytes of video containers decord (ffmpeg) reads: mp4/mov (an atom name at 4), mkv/webm,
# AVI (RIFF…AVI ), flv, mpeg-ps, ogg, and mpeg-ts (the 0x47 sync byte at the start of 3 packets).
_VIDEO_MAGIC: tuple[tuple[tuple[int, bytes], ...], ...] = (
    ((4, b"ftyp"),),
    ((4, b"moov"),),
    ((4, b"mdat"),),
    ((4, b"free"),),
    ((4, b"wide"),),
    ((0, b"\x1a\x45\xdf\xa3"),),
    ((0, b"RIFF"), (8, b"AVI ")),
    ((0, b"FLV"),),
    ((0, b"\x00\x00\x01\xba"),),
    ((0, b"OggS"),),
    ((0, b"\x47"), (188, b"\x47"), (376, b"\x47")),
)


class DataCheckError(RecordError):
    """The data failed its load-time checks; the message lists the records (``file:line``, id, reason)."""


@dataclass(frozen=True)
class Issue:
    """One finding: ``reason`` (a key listed in the module docstring), a message, where and id."""

    reason: str
    message: str
    where: str
    id: str

    @property
    def invalid(self) -> bool:
        """True when the record itself is wrong (not merely too long for this run)."""
        return self.reason not in UNFIT

    def __str__(self) -> str:
        return f"{self.where or '?'} (id {self.id}): {self.message}"


def message_issues(
    messages: Sequence[Message],
    n_images: int,
    n_videos: int,
    *,
    needs_answer: bool = True,
    image_token: str = "<image>",
    video_token: str = "<video>",
) -> list[tuple[str, str]]:
    """Structural findings of a conversation: roles, empty answers, placeholders, media counts.

    Args:
        needs_answer: SFT conversations must end with a non-empty assistant turn; a preference
            prompt (``False``) must end with a user turn instead.

    Returns:
        ``[(reason, message)]``, empty when the conversation is fine.
    """
    if not messages:
        return [("roles", "empty conversation")]
    out: list[tuple[str, str]] = []
    body = list(messages[1:] if messages[0]["role"] == "system" else messages)
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            out.append(
                ("roles", f"turn {i} is from {m['role']!r}, expected {expected!r} "
                 "(conversations alternate human/gpt, starting with human)")
            )  # fmt: skip
            break
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if needs_answer and not answers:
        out.append(("empty_answer", "no assistant (gpt) turn: there is no answer to train on"))
    elif needs_answer and body and body[-1]["role"] == "user":
        out.append(("roles", "the conversation ends with a user turn that has no assistant answer"))
    elif not needs_answer and (not body or body[-1]["role"] != "user"):
        out.append(("roles", "the prompt must end with a user (human) turn"))
    for i in answers:
        text = messages[i]["content"]
        if not text.strip():
            out.append(("empty_answer", f"assistant turn {i} is empty or whitespace"))
        out += _placeholders_in(text, f"assistant turn {i}", image_token, video_token)
    asked = [m["content"] for m in messages if m["role"] != "assistant"]
    n_img = sum(t.count(image_token) for t in asked)
    n_vid = sum(t.count(video_token) for t in asked)
    if (n_img, n_vid) != (n_images, n_videos):
        out.append(
            ("media_count", f"the text has {n_img} {image_token} and {n_vid} {video_token} placeholders but "
             f"the record has {n_images} image(s) and {n_videos} video(s); put one placeholder per "
             "media item in a user turn")
        )  # fmt: skip
    return out


def _placeholders_in(text: str, what: str, image_token: str, video_token: str) -> list[tuple[str, str]]:
    found = [t for t in (image_token, video_token) if t in text]
    if not found:
        return []
    return [
        (
            "placeholder_in_answer",
            f"{what} holds {' and '.join(found)}: media placeholders belong in user turns",
        )
    ]


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


@dataclass
class MediaChecker:
    """Checks media files exist and have a readable header (cached per path).

    Images: PIL identifies the format and size from the header (no decoding). Videos: the file
    is non-empty and starts like a known container (mp4/mov, mkv/webm, avi, flv, mpeg, ogg); a
    frame folder (:func:`~mmalign.data.media.frame_files`) holds only images, at least one, and
    the first one's header is readable (the others are read when the clip is loaded).
    """

    headers: bool = True
    _seen: dict[tuple[str, Path], tuple[str, str] | None] = field(default_factory=dict)

    def __call__(self, path: Path, kind: Literal["image", "video"]) -> tuple[str, str] | None:
        key = (kind, path)
        if key not in self._seen:
            self._seen[key] = self._check(path, kind)
        return self._seen[key]

    def _check(self, path: Path, kind: str) -> tuple[str, str] | None:
        if kind == "video" and path.is_dir():
            return self._check_frames(path)
        if not path.is_file():
            return "media_missing", f"{kind} file not found: {path}"
        if not self.headers:
            return None
        try:
            if kind == "image":
                with Image.open(path) as img:
                    # the loader's own size rule (padded square): refused here, not mid-run on one rank
                    check_image_size(img.width, img.height, MAX_IMAGE_PIXELS)
                return None
            with path.open("rb") as f:
                head = f.read(377)
        except MediaError as exc:
            return "media_unreadable", f"image {path}: {exc}"
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            return "media_unreadable", f"{kind} {path} cannot be read: {exc}"
        if not head:
            return "media_unreadable", f"video {path} is empty"
        if not any(all(head[at : at + len(m)] == m for at, m in parts) for parts in _VIDEO_MAGIC):
            return (
                "media_unreadable",
                f"video {path} does not start like a video container (mp4, mkv, webm, avi …)",
            )
        return None

    def _check_frames(self, folder: Path) -> tuple[str, str] | None:
        """A frame folder: only image files, at least one, the first one's header readable."""
        try:
            first = frame_files(folder)[0]
        except MediaError as exc:
            return "media_unreadable", str(exc)
        if not self.headers:
            return None
        try:
            with Image.open(first) as img:
                check_image_size(img.width, img.height, MAX_IMAGE_PIXELS)
        except MediaError as exc:
            return "media_unreadable", f"video frame {first}: {exc}"
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            return "media_unreadable", f"video frame {first} cannot be read: {exc}"
        return None

    def issues(self, images: Sequence[Path], videos: Sequence[Path]) -> list[tuple[str, str]]:
        found = [self(Path(p), "image") for p in images] + [self(Path(p), "video") for p in videos]
        return [f for f in found if f is not None]


def _tokens(processor: Any | None) -> tuple[str, str]:
    if processor is None:
        return "<image>", "<video>"
    return processor.cfg.image_token, processor.cfg.video_token


def _message(exc: Exception) -> str:
    """The message without a ``file:line (id …):`` prefix a :class:`RecordError` wrapper added."""
    return str(exc.__cause__) if isinstance(exc, RecordError) and exc.__cause__ is not None else str(exc)


def _encode_reason(exc: Exception) -> str:
    text = _message(exc)
    if "placeholders but the record has" in text:
        return "media_count"
    if "max_length" in text:
        return "too_long"
    return "encode"


def example_issues(
    example: Example,
    processor: Any | None = None,
    max_length: int | None = None,
    media: MediaChecker | None = None,
) -> list[tuple[str, str]]:
    """Findings of one SFT example: structure, media files, then (with a processor) tokens.

    With ``processor``, the conversation is tokenised exactly as training does
    (:meth:`~mmalign.data.processor.MultimodalProcessor.tokenize_conversation`, media tokens
    expanded) and checked for length and for answer tokens left after truncation.
    """
    image_token, video_token = _tokens(processor)
    n_img, n_vid = len(example.images), len(example.videos)
    found = message_issues(example.messages, n_img, n_vid, image_token=image_token, video_token=video_token)
    if media is not None:
        found += media.issues(example.images, example.videos)
    if found or processor is None:
        return found
    try:
        ids, labels = processor.tokenize_conversation(example.messages, n_img, n_vid, example.id, None)
    except ValueError as exc:
        return [(_encode_reason(exc), _message(exc))]
    if all(lab == IGNORE_INDEX for lab in labels):
        return [("no_targets", "the chat template renders no assistant token to train on")]
    if max_length is not None and len(ids) > max_length:
        media_ids = {processor.cfg.image_token_id, processor.cfg.video_token_id}
        if any(t in media_ids for t in ids[max_length:]):
            return [("too_long", f"{len(ids)} tokens (media tokens included) exceed max_length {max_length} "
                     "and truncation would cut media tokens")]  # fmt: skip
        if all(lab == IGNORE_INDEX for lab in labels[:max_length]):
            return [("no_targets", f"{len(ids)} tokens exceed max_length {max_length} and truncation "
                     "leaves no answer token to train on")]  # fmt: skip
    return []


def pair_issues(
    pair: Any,
    processor: Any | None = None,
    max_length: int | None = None,
    media: MediaChecker | None = None,
    encode: Callable[[Any], Any] | None = None,
) -> list[tuple[str, str]]:
    """Findings of one :class:`~mmalign.preference.formats.PreferencePair`.

    Args:
        encode: how the trainer tokenises a pair (without media); default
            ``encode_pair(processor, pair, max_length, load_media=False)``.
    """
    image_token, video_token = _tokens(processor)
    n_img, n_vid = len(pair.images), len(pair.videos)
    found = message_issues(
        pair.prompt, n_img, n_vid, needs_answer=False, image_token=image_token, video_token=video_token
    )
    for name, text in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if not text.strip():
            found.append(("empty_answer", f"the {name} answer is empty or whitespace"))
        found += _placeholders_in(text, f"the {name} answer", image_token, video_token)
    if not found and _same_text(pair.chosen, pair.rejected):
        found.append(("identical_pair", "chosen and rejected are the same answer: the pair trains nothing"))
    if media is not None:
        found += media.issues(pair.images, pair.videos)
    if found or processor is None:
        return found
    if encode is None:
        from mmalign.preference.batch import encode_pair

        def encode(p: Any) -> Any:
            return encode_pair(processor, p, max_length, load_media=False)

    try:
        enc = encode(pair)
    except ValueError as exc:
        return [(_encode_reason(exc), _message(exc))]
    scored = [
        [t for t, s in zip(r, m, strict=True) if s] for r, m in zip(enc.responses, enc.scored, strict=True)
    ]
    for name, toks in zip(("chosen", "rejected"), scored, strict=False):
        if not toks:
            return [
                (
                    "no_targets",
                    f"the {name} answer has no token left after truncation to max_length {max_length}",
                )
            ]
    if scored[0] == scored[1]:
        return [("identical_after_truncation", f"chosen and rejected are identical after truncation to "
                 f"max_length {max_length} ({len(scored[0])} answer tokens)")]  # fmt: skip
    return []


def record_issues(
    record: Any,
    processor: Any | None = None,
    max_length: int | None = None,
    media: MediaChecker | None = None,
    encode: Callable[[Any], Any] | None = None,
) -> list[Issue]:
    """All findings of an :class:`Example` or a preference pair, as :class:`Issue` (where and id)."""
    if isinstance(record, Example):
        found = example_issues(record, processor, max_length, media)
    else:
        found = pair_issues(record, processor, max_length, media, encode)
    where = getattr(record, "where", "")
    return [Issue(r, m, where, str(record.id)) for r, m in found]


@dataclass
class DataReport:
    """What :func:`check_dataset` found: totals, findings (one per record), the policy, timing."""

    total: int
    kept: int
    issues: list[Issue]
    policy: str
    seconds: float
    tokenized: bool

    @property
    def errors(self) -> list[Issue]:
        """The findings that fail the run under the policy."""
        if self.policy == "strict":
            return list(self.issues)
        if self.policy == "skip":
            return [i for i in self.issues if i.invalid]
        return []

    @property
    def skipped(self) -> list[Issue]:
        errors = set(self.errors)
        return [i for i in self.issues if i not in errors]

    def counts(self) -> dict[str, int]:
        """Records by reason."""
        return dict(sorted(Counter(i.reason for i in self.issues).items()))

    def summary(self, limit: int = 20) -> str:
        """A few lines: totals, counts by reason, the first ``limit`` skipped records."""
        rate = self.total / self.seconds if self.seconds > 0 else float("inf")
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items()) or "none"
        lines = [
            f"[data] {self.total} records checked in {self.seconds:.1f}s ({rate:.0f} rec/s"
            f"{', tokenised' if self.tokenized else ''}; policy {self.policy}): {self.kept} kept, "
            f"{len(self.skipped)} skipped; findings: {counts}"
        ]
        lines += [f"  skipped [{i.reason}] {i}" for i in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  … and {len(self.skipped) - limit} more skipped")
        return "\n".join(lines)

    def error_text(self, limit: int = 20) -> str:
        errs = self.errors
        hint = {
            "strict": "data_checks: strict makes every finding an error",
            "skip": "fix the records, or set data_checks: skip_invalid to skip them (counted and listed)",
        }.get(self.policy, "")
        lines = [f"data check failed: {len(errs)} of {self.total} records rejected ({hint}):"]
        lines += [f"  [{i.reason}] {i}" for i in errs[:limit]]
        if len(errs) > limit:
            lines.append(f"  … and {len(errs) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "kept": self.kept,
            "policy": self.policy,
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "issues": [
                {"reason": i.reason, "where": i.where, "id": i.id, "message": i.message} for i in self.issues
            ],
        }


def check_dataset(
    records: Sequence[Any],
    processor: Any | None = None,
    max_length: int | None = None,
    policy: str = "skip",
    encode: Callable[[Any], Any] | None = None,
    media_headers: bool = True,
    raise_errors: bool = True,
) -> tuple[list[Any], DataReport]:
    """Run every record check once over a loaded data set; keep what may be trained.

    Deterministic: every rank of a run computes the same result, so no rank diverges. A record
    repeated in a mixture (``repeat``) is checked once.

    Args:
        records: :class:`Example` (SFT) or preference pairs, as loaded.
        processor: the model's :class:`~mmalign.data.processor.MultimodalProcessor`; None runs
            the structural and media checks only.
        max_length: the run's token limit (media tokens included).
        policy: ``strict``, ``skip`` or ``skip_invalid`` (see the module docstring).
        encode: preference pairs: the trainer's tokenisation (e.g. with a reward suffix).
        media_headers: also open each media file's header (else only check it exists).
        raise_errors: raise on errors (else only report them).

    Returns:
        ``(kept records, report)``.

    Raises:
        DataCheckError: findings the policy does not skip, or no record left — naming each
            record's ``file:line``, id and reason.
    """
    if policy not in POLICIES:
        raise ValueError(f"data_checks must be one of {POLICIES}, got {policy!r}")
    t0 = time.perf_counter()
    media = MediaChecker(headers=media_headers)
    found: dict[int, list[Issue]] = {}
    for rec in records:
        if id(rec) not in found:
            found[id(rec)] = record_issues(rec, processor, max_length, media, encode)
    issues = [found[k][0] for k in dict.fromkeys(id(r) for r in records) if found[k]]
    kept = [r for r in records if not found[id(r)]]
    report = DataReport(
        len(records), len(kept), issues, policy, time.perf_counter() - t0, processor is not None
    )
    if raise_errors and report.errors:
        raise DataCheckError(report.error_text())
    if raise_errors and not kept:
        raise DataCheckError(
            f"no record left to train on: all {len(records)} were skipped ({report.counts()}); "
            f"first: {issues[0] if issues else '-'}"
        )
    return kept, report


def check_record(
    rec: Any, fmt: str, where: str, media_root: str | Path | None = None, media: MediaChecker | None = None
) -> Issue | None:
    """The structural checks of one raw record as a trainer reads it (no tokenizer): for builders.

    Args:
        rec: the record as it will be written.
        fmt: ``llava`` / ``lrv`` (SFT) or a preference format (``povid``, ``llava_rlhf``, ``hound``,
            ``trl``, ``auto``).
        where: what to name it by (e.g. the source record's ``file:line``).
        media_root: when given, media files must exist there.

    Returns:
        The first finding, or None.
    """
    root = Path(media_root) if media_root is not None else Path(".")
    rid = str(rec.get("id", rec.get("image_id", where))) if isinstance(rec, dict) else where
    try:
        if fmt in ("llava", "lrv"):
            parsed: Any = record_to_example(rec, root, where, fmt)  # type: ignore[arg-type]
        else:
            from mmalign.preference.formats import record_to_pair

            parsed = record_to_pair(rec, root, where, fmt)  # type: ignore[arg-type]
    except RecordError as exc:
        return Issue("malformed", str(exc), where, rid)
    checker = (media or MediaChecker()) if media_root is not None else None
    issues = record_issues(parsed, None, None, checker)
    return issues[0] if issues else None
