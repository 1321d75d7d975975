"""Runs chat requests on one LMM: prompt building, token-by-token KV-cached decoding, a job queue.

One worker thread owns the model; requests wait in a bounded FIFO queue (a full queue is a
503 for the client, never a crash), and a cancelled job (client gone) stops at the next token.
:func:`stream_token_ids` streams the steps of the library's one decoding loop
(:func:`mmalign.models.decoding.decode_steps`: KV-cached, media placeholders never produced) —
greedy when ``temperature == 0``, else temperature/top-p sampling. Greedy output equals
:meth:`LMM.generate`'s (tested). Media are processed exactly as in training
(:mod:`mmalign.data.media`): images arrive upright and 8-bit from the decoder and are composited
onto the model's background (the padding colour in ``pad`` mode, white in ``resize``); a
video's frames are chosen by their timestamps.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmalign.data.media import MediaError, load_video_frames, process_image, process_video
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.decoding import GenerationConfig, decode_steps
from mmalign.models.lmm import LMM
from mmalign.serve.protocol import ChatRequest, RequestError


@dataclass
class Prepared:
    """Model inputs of one request."""

    input_ids: torch.Tensor  # (1, L)
    images: torch.Tensor | None  # (Ni, 3, S, S)
    videos: torch.Tensor | None  # (Nv, T, 3, S, S)
    max_new_tokens: int


@dataclass
class Completion:
    """What a finished request produced."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


@torch.no_grad()
def stream_token_ids(
    model: LMM,
    prepared: Prepared,
    stop_ids: set[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[int]:
    """Yield new token ids one by one until a stop id, ``max_new_tokens`` or ``cancelled()``.

    The steps of :func:`~mmalign.models.decoding.decode_steps` on one row: greedy at
    ``temperature == 0``, else temperature / top-p sampling (seeded by ``seed`` when given). The
    stop token itself is not yielded.
    """
    device = next(model.llm.parameters()).device
    ids = prepared.input_ids.to(device)
    images = prepared.images.to(device) if prepared.images is not None else None
    videos = prepared.videos.to(device) if prepared.videos is not None else None
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    cfg = GenerationConfig(
        max_new_tokens=prepared.max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_p=top_p,
        stop_token_ids=tuple(stop_ids),
    )
    for step in decode_steps(model, ids, torch.ones_like(ids), images, videos, cfg, generator=generator):
        tok = int(step.tokens[0])
        if tok in stop_ids or cancelled():
            return
        yield tok


class TextStream:
    """Turns token ids into text deltas: holds back incomplete characters and partial stop strings."""

    def __init__(self, tokenizer: Any, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def push(self, tok: int) -> str:
        """Add a token; return the text that is now safe to emit (may be empty)."""
        self.ids.append(tok)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for s in self.stop:
            at = text.find(s)
            if at >= 0:
                self.stopped = True
                text = text[:at]
        if not self.stopped:
            if text.endswith("\ufffd"):
                return ""
            hold = max((len(s) - 1 for s in self.stop), default=0)
            text = text[: len(text) - hold] if hold else text
        delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent = text if text.startswith(self.sent) else self.sent
        return delta

    def flush(self) -> str:
        """The held-back rest once generation has ended."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        delta = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent += delta
        return delta


@dataclass
class Job:
    """A queued request; ``emit`` receives ``("delta", str)`` then ``("done", Completion)`` or ``("error", exc)``."""

    request: ChatRequest
    prepared: Prepared
    emit: Callable[[tuple[str, Any]], None]
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class ChatEngine:
    """One model behind a FIFO job queue served by a single worker thread.

    Args:
        model / tokenizer: the LMM and its tokenizer (e.g. from :func:`~mmalign.models.checkpoint.load_model`).
        model_name: the id clients send as ``model`` and ``/v1/models`` lists.
        max_queue: requests waiting at most; one more is refused (:class:`RequestError` 503).
    """

    def __init__(self, model: LMM, tokenizer: Any, model_name: str, max_queue: int = 32) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.processor = MultimodalProcessor.for_model(model, tokenizer)
        self.stop_ids = set(self.processor.stop_token_ids)
        cfg = model.cfg
        self.placeholders = (cfg.image_token, cfg.video_token if cfg.video_token_id >= 0 else "")
        self.context = int(getattr(model.llm.config, "max_position_embeddings", 0) or 0)
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------- inputs
    def _video_tensor(self, video: tuple[bytes, str] | Path, index: int) -> torch.Tensor:
        cfg = self.model.cfg
        if isinstance(video, Path):  # a frame folder under the media root, checked by the protocol
            try:
                frames = load_video_frames(video, cfg.video_frames, cfg.video_fps)
            except MediaError as exc:
                raise RequestError(415, f"video {index}: cannot read its frames ({exc})", "messages") from exc
            return process_video(frames, cfg.image_processor)
        data, suffix = video
        fd, path = tempfile.mkstemp(suffix=suffix, prefix="mmalign-video-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            frames = load_video_frames(path, self.model.cfg.video_frames, self.model.cfg.video_fps)
        except MediaError as exc:
            raise RequestError(
                415, f"video {index}: cannot decode it as a video ({exc})", "messages"
            ) from exc
        finally:
            os.unlink(path)
        return process_video(frames, self.model.cfg.image_processor)

    def prepare(self, request: ChatRequest) -> Prepared:
        """Tokenise the conversation, process the media, fit ``max_new_tokens`` into the context.

        Raises:
            RequestError: the conversation does not render, or the prompt fills the context.
        """
        try:
            ids = self.processor.tokenize_prompt(
                request.messages, len(request.images), len(request.videos), "request"
            )
        except ValueError as exc:
            raise RequestError(400, str(exc), "messages") from exc
        max_new = request.max_new_tokens
        if self.context:
            if len(ids) >= self.context:
                raise RequestError(
                    400,
                    f"the prompt has {len(ids)} tokens (media included); the model's context is {self.context}",
                    "messages",
                    "context_length_exceeded",
                )
            max_new = min(max_new, self.context - len(ids))
        ip = self.model.cfg.image_processor
        dtype = next(self.model.vision.parameters()).dtype
        try:  # composites transparency onto the mode's background; bounds the work (pad square)
            images = (
                torch.stack([process_image(im, ip) for im in request.images]).to(dtype)
                if request.images
                else None
            )
        except MediaError as exc:
            raise RequestError(413, f"an image is too large to process: {exc}", "messages") from exc
        videos = None
        if request.videos:
            videos = torch.stack([self._video_tensor(v, i) for i, v in enumerate(request.videos)]).to(dtype)
        return Prepared(torch.tensor([ids], dtype=torch.long), images, videos, max_new)

    # ----------------------------------------------------------------------------- running
    def run(
        self, request: ChatRequest, prepared: Prepared, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[str]:
        """Generate in the calling thread, yielding text deltas; returns the :class:`Completion`.

        Use as ``gen = engine.run(...)``; the generator's return value (``StopIteration.value``)
        is the completion. Not thread-safe by itself: the server calls it from its one worker.
        """
        text = TextStream(self.tokenizer, request.stop)
        n = 0
        for tok in stream_token_ids(
            self.model, prepared, self.stop_ids, request.temperature, request.top_p, request.seed, cancelled
        ):
            n += 1
            delta = text.push(tok)
            if delta:
                yield delta
            if text.stopped:
                break
        rest = text.flush()
        if rest:
            yield rest
        finish = "stop" if text.stopped or n < prepared.max_new_tokens else "length"
        return Completion(text.sent, finish, int(prepared.input_ids.shape[1]), n)

    def complete(self, request: ChatRequest) -> Completion:
        """Prepare and generate in the calling thread (CLI use); returns the whole completion."""
        gen = self.run(request, self.prepare(request))
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def submit(
        self, request: ChatRequest, prepared: Prepared, emit: Callable[[tuple[str, Any]], None]
    ) -> Job:
        """Queue a job for the worker thread (started on first use).

        Raises:
            RequestError: 503 when ``max_queue`` jobs are already waiting.
        """
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="mmalign-chat-worker", daemon=True)
                self._worker.start()
        job = Job(request, prepared, emit)
        try:
            self._queue.put_nowait(job)
        except queue.Full as exc:
            raise RequestError(
                503, "the server is busy (request queue full); retry later", code="queue_full"
            ) from exc
        return job

    @property
    def pending(self) -> int:
        """Jobs waiting in the queue."""
        return self._queue.qsize()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job.cancelled.is_set():
                continue
            try:
                gen = self.run(job.request, job.prepared, job.cancelled.is_set)
                while True:
                    try:
                        job.emit(("delta", next(gen)))
                    except StopIteration as stop:
                        job.emit(("done", stop.value))
                        break
            except Exception as exc:  # reported to the waiting client; the worker lives on
                job.emit(("error", exc))
