"""The POVID builder: (ground truth, injected hallucination) pairs, and distorted images.

Input: LLaVA records. The last assistant turn is the preferred answer y_w (turns after it are
dropped); the dispreferred one is the same answer with a hallucination injected
(:mod:`mmalign.builders.povid_rules`, or the LLM back-end with ``configs/prompts/povid_inject.txt``).
What is present in the image comes from the record's scene graph when one is given (``scenes``:
ShapeWorld ``scenes/*.jsonl`` joined on the record's ``scene_id``, or an ``objects`` field), else from
the objects the answer mentions. Co-occurrence statistics are mined from the same corpus before
the run (from the scene graphs when given, else from the answers) and written to
``cooccurrence.json``.

Output ``povid.jsonl``: POVID's format ``{id, image, conversations, rejected_conversations}`` plus
``injection: {kind, ...}`` (what was injected) and, with image distortion, ``noisy_image`` (written
to disk, clipped to [0, 1] for PNG) or ``distortion: {t, seed}`` (applied on the fly by the trainer:
``train/dpo.py`` with POVID's y_noise). Distortion is POVID's forward diffusion noise at step ``t``
(default 500), :func:`mmalign.preference.distortion.diffusion_noise`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from mmalign.builders.io import iter_inputs
from mmalign.builders.llm_backend import LLMBackend, Request, load_prompt, no_reply, parse_json_reply
from mmalign.builders.povid_rules import INJECTION_KINDS, CooccurrenceStats, Injection, injections
from mmalign.builders.runner import Built, Item, default_id, record_rng
from mmalign.builders.scene import SceneDesc, scene_from_record
from mmalign.data.formats import RecordError
from mmalign.data.media import WHITE, load_image, to_rgb
from mmalign.preference.distortion import diffusion_noise
from mmalign.utils import atomic_write, stable_seed

Distort = Literal["none", "disk", "fly"]


@dataclass
class POVIDOptions:
    """Knobs of the POVID builder.

    Attributes:
        kinds: injection kinds to use.
        all_kinds: one pair per applicable kind (else one pair per record, kind drawn at random).
        seed: seed of every random choice (per record, order independent).
        distort: ``none``, ``disk`` (write noisy PNGs) or ``fly`` (record t and seed only).
        t: diffusion step of the distortion (POVID: 500 of 1000).
        media_root: folder image paths are relative to (images are checked to exist when set).
        noisy_dir: where ``disk`` writes noisy images (relative to ``media_root``).
        prompt: LLM back-end prompt.
    """

    kinds: tuple[str, ...] = INJECTION_KINDS
    all_kinds: bool = False
    seed: int = 0
    distort: Distort = "none"
    t: int = 500
    media_root: str | None = None
    noisy_dir: str = "povid_noisy"
    prompt: str = "povid_inject"

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(INJECTION_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"unknown injection kinds {sorted(unknown)}; choose from {INJECTION_KINDS}")
        if self.distort not in ("none", "disk", "fly"):
            raise ValueError(f"distort must be none, disk or fly, got {self.distort!r}")
        if not 0 <= self.t < 1000:
            raise ValueError(f"t must be in [0, 1000), got {self.t}")
        if self.distort == "disk" and not self.media_root:
            raise ValueError("distort=disk needs media_root (where images are read and noisy ones written)")


def distort_image(image: Image.Image | str | Path, t: int = 500, seed: int = 0) -> torch.Tensor:
    """POVID's noised image ``(3, H, W)`` float32, unclipped (``√ᾱ_t·x0 + √(1−ᾱ_t)·ε`` on [0, 1] pixels)."""
    img = load_image(image, background=WHITE) if isinstance(image, (str, Path)) else to_rgb(image)
    x0 = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return diffusion_noise(x0, t, generator=torch.Generator().manual_seed(seed))


def save_distorted(src: str | Path, dst: str | Path, t: int = 500, seed: int = 0) -> None:
    """Write the noised image as PNG (clipped to [0, 1], rounded to 8 bits), atomically."""
    x = distort_image(src, t, seed).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    import io

    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, buf.getvalue())


def load_scene_index(paths: Sequence[str | Path], image_size: float | None = None) -> dict[str, SceneDesc]:
    """Scene graphs by id (ShapeWorld ``scenes/*.jsonl``; video scenes and bad lines are skipped)."""
    out = {}
    for path in paths:
        for where, rec in iter_inputs(path):
            if isinstance(rec, Exception) or rec.get("kind", "image") != "image" or "objects" not in rec:
                continue
            scene = scene_from_record(rec, where, image_size)
            out[scene.id] = scene
    return out


def split_conversation(rec: Mapping[str, Any], where: str) -> tuple[list[dict[str, Any]], str]:
    """``(turns before the last assistant turn, its text)``."""
    convs = rec.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise RecordError(f"{where}: missing or empty 'conversations'")
    for turn in convs:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise RecordError(f"{where}: every turn needs 'from' and a string 'value'")
    last = max((i for i, t in enumerate(convs) if t["from"] in ("gpt", "assistant")), default=None)
    if last is None or last == 0:
        raise RecordError(f"{where}: no assistant (gpt) turn after a human turn")
    answer = convs[last]["value"]
    if not answer.strip():
        raise RecordError(f"{where}: the assistant answer is empty")
    return [dict(t) for t in convs[:last]], answer


def mine_stats(inputs: Iterable[str | Path], scenes: Mapping[str, SceneDesc] | None) -> CooccurrenceStats:
    """Co-occurrence statistics of the corpus: of the scene graphs if given, else of the answers' mentions."""
    if scenes:
        return CooccurrenceStats.from_scenes(scenes.values())
    stats = CooccurrenceStats()
    for path in inputs:
        for where, rec in iter_inputs(path):
            if isinstance(rec, Exception):
                continue
            try:
                stats.add(scene_from_record(rec, where))
            except (RecordError, ValueError, KeyError, TypeError):
                continue
    return stats


class POVIDBuilder:
    """Rule-based or LLM POVID builder for :func:`mmalign.builders.runner.run_builder`."""

    name = "povid"
    outputs = ("povid",)
    output_formats = {"povid": "povid"}  # every written pair passes the trainers' checks

    def __init__(
        self,
        options: POVIDOptions,
        stats: CooccurrenceStats,
        scenes: Mapping[str, SceneDesc] | None = None,
        llm: LLMBackend | None = None,
    ) -> None:
        self.opt = options
        self.stats = stats
        self.scenes = scenes or {}
        self.llm = llm
        self.template = load_prompt(options.prompt) if llm else None

    @property
    def media_root(self) -> str | None:
        return self.opt.media_root

    def record_id(self, rec: Mapping[str, Any], where: str) -> str:
        return default_id(rec, where)

    def _prepare(self, item: Item) -> tuple[list[dict[str, Any]], str, SceneDesc]:
        rec = item.record
        prefix, answer = split_conversation(rec, item.where)
        image = rec.get("image")
        if image is not None and not isinstance(image, str):
            raise RecordError(f"{item.where}: 'image' must be a path string")
        if self.opt.media_root and image and not (Path(self.opt.media_root) / image).is_file():
            raise RecordError(f"{item.where}: image not found: {Path(self.opt.media_root) / image}")
        sid = rec.get("scene_id")
        if sid is not None and sid in self.scenes:
            scene = self.scenes[sid]
        elif "objects" in rec:
            scene = scene_from_record(rec, item.where)
        else:
            scene = scene_from_record(
                {"id": item.id, "conversations": [{"from": "gpt", "value": answer}]}, item.where
            )
        return prefix, answer, scene

    def _records(
        self, item: Item, prefix: list[dict[str, Any]], answer: str, injs: Sequence[Injection]
    ) -> Built:
        rec, out = item.record, []
        image = rec.get("image")
        extra: dict[str, Any] = {}
        if image and self.opt.distort != "none":
            seed = stable_seed(self.opt.seed, "distort", image)
            if self.opt.distort == "fly":
                extra["distortion"] = {"t": self.opt.t, "seed": seed}
            else:
                noisy = f"{self.opt.noisy_dir}/{Path(image).stem}_t{self.opt.t}.png"
                root = Path(self.opt.media_root)  # type: ignore[arg-type]
                if not (root / noisy).exists():
                    save_distorted(root / image, root / noisy, self.opt.t, seed)
                extra["noisy_image"] = noisy
        for inj in injs:
            pair = {
                "id": item.id if len(injs) == 1 and not self.opt.all_kinds else f"{item.id}-{inj.kind}",
                "conversations": [*prefix, {"from": "gpt", "value": answer}],
                "rejected_conversations": [*prefix, {"from": "gpt", "value": inj.text}],
                "injection": {"kind": inj.kind, **inj.detail},
                **extra,
            }
            if image:
                pair["image"] = image
            for key in ("video", "scene_id", "task"):  # a video record keeps its video
                if key in rec:
                    pair[key] = rec[key]
            out.append(pair)
        counts = Counter(i.kind for i in injs)
        if not injs:
            counts["no_injection"] += 1
        return Built({"povid": out}, dict(counts))

    def build(self, items: Sequence[Item]) -> list[Built | Exception]:
        prepared: list[tuple[list[dict[str, Any]], str, SceneDesc] | Exception] = []
        for item in items:
            try:
                prepared.append(self._prepare(item))
            except (RecordError, ValueError, KeyError, TypeError, OSError) as exc:
                prepared.append(exc)
        if self.llm is not None:
            return self._llm(items, prepared)
        out: list[Built | Exception] = []
        for item, prep in zip(items, prepared, strict=True):
            if isinstance(prep, Exception):
                out.append(prep)
                continue
            prefix, answer, scene = prep
            rng = record_rng(self.opt.seed, self.name, item.id)
            injs = injections(answer, scene, self.stats, rng, self.opt.kinds)
            if injs and not self.opt.all_kinds:
                injs = [rng.choice(injs)]
            try:
                out.append(self._records(item, prefix, answer, injs))
            except OSError as exc:
                out.append(RecordError(f"{item.where}: cannot distort the image: {exc}"))
        return out

    def _validate(self, answer: str) -> Any:
        def check(text: str) -> Injection:
            reply = parse_json_reply(text)
            if not isinstance(reply, dict) or not isinstance(reply.get("rejected"), str):
                raise ValueError('expected {"rejected": str, "kind": str, "detail": str}')
            rejected, kind = reply["rejected"].strip(), str(reply.get("kind", "")).strip()
            if not rejected or rejected == answer.strip():
                raise ValueError("the rejected answer is empty or equals the truth")
            if kind not in self.opt.kinds:
                raise ValueError(f"kind {kind!r} is not one of {self.opt.kinds}")
            return Injection(kind, rejected, {"detail": str(reply.get("detail", "")), "source": "llm"})

        return check

    def _llm(self, items: Sequence[Item], prepared: list[Any]) -> list[Built | Exception]:
        out: list[Built | Exception] = list(prepared)
        live = [k for k, p in enumerate(prepared) if not isinstance(p, Exception)]
        requests, checks = [], []
        for k in live:
            prefix, answer, _scene = prepared[k]
            question = next((t["value"] for t in reversed(prefix) if t["from"] in ("human", "user")), "")
            text = self.template.format(  # type: ignore[union-attr]
                question=question.replace("<image>", "").strip(),
                answer=answer,
                kinds=", ".join(self.opt.kinds),
            )
            image = items[k].record.get("image")
            requests.append(Request(text, [Path(self.opt.media_root or ".") / image] if image else []))
            checks.append(self._validate(answer))
        replies = self.llm.ask_many(requests, checks)  # type: ignore[union-attr]
        for k, inj in zip(live, replies, strict=True):
            prefix, answer, _scene = prepared[k]
            if inj is None:
                out[k] = no_reply(self.llm.client)  # type: ignore[union-attr]
            else:
                try:
                    out[k] = self._records(items[k], prefix, answer, [inj])
                except OSError as exc:
                    out[k] = RecordError(f"{items[k].where}: cannot distort the image: {exc}")
        return out


def write_stats(out_dir: str | Path, stats: CooccurrenceStats) -> Path:
    """``cooccurrence.json`` next to the outputs."""
    path = Path(out_dir) / "cooccurrence.json"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(stats.to_dict(), indent=2, sort_keys=True).encode())
    return path
