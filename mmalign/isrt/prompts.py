"""i-SRT's prompt pool, its prompts (answer, describe, revise, judge) and the clip cache.

Pool records: ``{id, video, question | prompt, truth?}`` (LLaVA-Hound's records name the question ``prompt``) — from a JSON/JSONL file, or ShapeWorld's video QA
items (``qa/<split>.jsonl``; ``truth`` is the exact item :func:`mmalign.shapeworld.judges.qa_correct`
checks). Every stage of an iteration reads a clip's frames through one :class:`ClipCache`, i.e.
through :meth:`MultimodalProcessor.load_media` (the model's own frame sampling); the DPO stage
loads them the same way, so sampling, context, judging, reference scoring and training see the
same frames (the records carry ``frames``: a digest of the pixels, checked by the tests).
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmalign.data.formats import Example, RecordError, iter_json_records
from mmalign.data.processor import MultimodalProcessor
from mmalign.data.templates import Message
from mmalign.isrt.config import EvalConfig, ISRTConfig, PoolConfig
from mmalign.utils import stable_seed

VIDEO = "<video>"


@dataclass
class PoolRecord:
    """One (video, question) prompt.

    Attributes:
        id: unique record id.
        video: the video file.
        question: the user's question, without the ``<video>`` placeholder.
        truth: the exact QA item (ShapeWorld), or None.
        video_key: the video as the record names it (relative path), the key of contexts.
    """

    id: str
    video: Path
    question: str
    truth: dict[str, Any] | None = None
    video_key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def _shapeworld_items(root: Path, split: str) -> list[dict[str, Any]]:
    path = root / "qa" / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no ShapeWorld QA file {path} (generate with python -m mmalign.shapeworld)")
    items = [rec for _, rec in iter_json_records(path) if "video" in rec]
    return [
        {"id": f"{q['scene_id']}-q{k}", "video": q["video"], "question": q["question"], "truth": q}
        for k, q in enumerate(items)
    ]


def load_records(
    path: str | None, shapeworld: str | None, split: str, media_root: str | None, limit: int = 0,
    need_answer: bool = False,
) -> list[PoolRecord]:  # fmt: skip
    """Pool (or evaluation) records from a file or a ShapeWorld split.

    Args:
        need_answer: every record without a ShapeWorld ``truth`` must carry a non-empty
            ``answer`` (evaluation: the LLM judge compares the prediction with it).

    Raises:
        FileNotFoundError: a missing file or video.
        RecordError: a record without ``id``/``video``/``question`` (or, with ``need_answer``,
            ``answer``) or a repeated id (names it).
    """
    if shapeworld is not None:
        root = Path(media_root or shapeworld)
        rows = [("", r) for r in _shapeworld_items(Path(shapeworld), split)]
    else:
        assert path is not None
        root = Path(media_root) if media_root else Path(path).parent
        rows = list(iter_json_records(path))
    out: list[PoolRecord] = []
    seen: set[str] = set()
    for where, rec in rows[: limit or None]:
        if isinstance(rec, dict) and "question" not in rec and isinstance(rec.get("prompt"), str):
            rec = {**rec, "question": rec["prompt"]}  # LLaVA-Hound's records name it prompt
        if not isinstance(rec, dict) or not all(k in rec for k in ("id", "video", "question")):
            raise RecordError(f"{where or 'pool'}: a record needs id, video and question (or prompt)")
        rid = str(rec["id"])
        if need_answer and rec.get("truth") is None and not str(rec.get("answer", "")).strip():
            raise RecordError(
                f"{where or 'eval'} (id {rid}): an evaluation record without a ShapeWorld truth needs "
                "its reference 'answer' (the judge compares the prediction with it)"
            )
        if rid in seen:
            raise RecordError(f"{where or 'pool'}: id {rid} repeats")
        seen.add(rid)
        video = root / str(rec["video"])
        if not video.exists():
            raise FileNotFoundError(f"{where or 'pool'} (id {rid}): video not found: {video}")
        question = str(rec["question"]).replace(VIDEO, "").strip()
        meta = {k: v for k, v in rec.items() if k not in ("id", "video", "question", "truth")}
        out.append(PoolRecord(rid, video, question, rec.get("truth"), str(rec["video"]), meta))
    return out


def load_pool(cfg: PoolConfig) -> list[PoolRecord]:
    """The prompt pool (:func:`load_records`; no answers needed)."""
    return load_records(cfg.path, cfg.shapeworld, cfg.split, cfg.media_root, cfg.max_records)


def load_eval(cfg: EvalConfig) -> list[PoolRecord]:
    """The evaluation records, ``[]`` when none are set: a ShapeWorld split (:func:`load_records`),
    or a video-QA file read as ``eval/run.py`` reads it (:func:`mmalign.eval.video_qa.load_video_qa`:
    Video-ChatGPT's ``video_name`` / ``question_id``, a bare name → ``.mp4``, frame folders), each
    record without a ShapeWorld ``truth`` needing its non-empty reference ``answer``.

    Raises:
        FileNotFoundError / RecordError: as :func:`load_video_qa`; a repeated id, or an empty
            ``answer`` on a record without ``truth`` (naming file:line and id).
    """
    if cfg.path is None and cfg.shapeworld is None:
        return []
    if cfg.shapeworld is not None:
        return load_records(
            None, cfg.shapeworld, cfg.split, cfg.media_root, cfg.max_records, need_answer=True
        )
    from mmalign.eval.video_qa import load_video_qa

    root = Path(cfg.media_root) if cfg.media_root else Path(cfg.path).parent
    out: list[PoolRecord] = []
    for rec in load_video_qa(cfg.path, root, need_answer=False)[: cfg.max_records or None]:
        rid, where = str(rec["id"]), rec["_where"]
        if rec.get("truth") is None and not str(rec.get("answer", "")).strip():
            raise RecordError(
                f"{where} (id {rid}): an evaluation record without a ShapeWorld truth needs its "
                "reference 'answer' (the judge compares the prediction with it)"
            )
        if any(r.id == rid for r in out):
            raise RecordError(f"{where}: id {rid} repeats")
        question = str(rec["question"]).replace(VIDEO, "").strip()
        skip = ("id", "video", "question", "truth", "video_path", "_where")
        meta = {k: v for k, v in rec.items() if k not in skip}
        out.append(
            PoolRecord(rid, Path(rec["video_path"]), question, rec.get("truth"), str(rec["video"]), meta)
        )
    return out


def iteration_pool(pool: list[PoolRecord], per_iteration: int, seed: int, iteration: int) -> list[PoolRecord]:
    """The prompts of one iteration: the whole pool, or ``per_iteration`` drawn by (seed, iteration)."""
    if not per_iteration or per_iteration >= len(pool):
        return list(pool)
    rng = random.Random(stable_seed(seed, "isrt-pool", iteration))
    keep = set(rng.sample(range(len(pool)), per_iteration))
    return [r for i, r in enumerate(pool) if i in keep]


def user_turn(text: str) -> list[Message]:
    """A single user turn about the video (the placeholder first, as LLaVA-Hound's prompts)."""
    return [{"role": "user", "content": f"{VIDEO}\n{text}"}]


def describe_text(cfg: ISRTConfig, previous: str | None) -> str:
    """The context prompt: the describe prompt (c_0, ``fresh``) or the revise prompt with c_{t−1}."""
    if previous is None:
        return cfg.describe_prompt
    return cfg.revise_prompt.format(previous=previous)


def judge_text(cfg: ISRTConfig, question: str, answer_a: str, answer_b: str, context: str | None) -> str:
    """The self-judge's question: optional context block, the question and the two answers."""
    block = cfg.context_block.format(context=context) if context is not None else ""
    return cfg.judge_prompt.format(
        context_block=block, question=question, answer_a=answer_a, answer_b=answer_b
    )


def frames_digest(videos: torch.Tensor) -> str:
    """A short digest of a clip's pixels (equal digests: the same frames, the same processing)."""
    return hashlib.sha256(videos.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]


class ClipCache:
    """Each clip's frames ``(1, T, 3, S, S)`` loaded once by the processor (LRU of ``size`` clips)."""

    def __init__(self, processor: MultimodalProcessor, size: int = 64) -> None:
        self.processor = processor
        self.size = size
        self._clips: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, video: Path, record_id: str = "") -> torch.Tensor:
        key = str(video)
        if key in self._clips:
            self._clips.move_to_end(key)
            return self._clips[key]
        example = Example(record_id or key, user_turn(""), [], [Path(video)])
        try:
            _, clip = self.processor.load_media(example)
        except Exception as exc:  # MediaError and decoder errors: name the record
            raise RecordError(f"record {record_id}: cannot load video {video}: {exc}") from exc
        assert clip is not None
        self._clips[key] = clip
        if len(self._clips) > self.size:
            self._clips.popitem(last=False)
        return clip

    def prompt_features(self, record_id: str, messages: list[Message], video: Path) -> dict[str, Any]:
        """Generation features of a one-video prompt (what :func:`generate` takes)."""
        ids = self.processor.tokenize_prompt(messages, 0, 1, record_id)
        return {
            "id": record_id,
            "input_ids": ids,
            "labels": None,
            "images": None,
            "videos": self(video, record_id),
        }
