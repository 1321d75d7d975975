"""The LRV-Instruction builder: positive and negative instructions per image, in LRV and LLaVA formats.

Input records (one per image; see :mod:`mmalign.builders.scene`): ShapeWorld scene graphs, dense
captions with boxes (ShapeWorld or Visual-Genome style) or LLaVA records. Output per image:
``n_positive`` positives over :data:`~mmalign.builders.lrv_rules.POSITIVE_TASKS` and ``n_negative``
negatives over the three kinds — ``round(per_image · p / (p + n))`` positives for a ``p:n`` ratio
(default 1:1, the balanced mix LRV found most robust).

Outputs: ``lrv.jsonl`` — ``{image_id, image, question, answer, task}`` (+ ``negative_type`` for
``task: negative``), LRV-Instruction's format; ``llava.jsonl`` — ``{id, image, conversations,
task}`` for :func:`mmalign.data.formats.load_llava`.

Back-ends: ``rules`` (offline, exact for scene graphs) or ``llm``: the dense captions (LRV's
``caption: X: Y: Width: Height:`` lines) and, for multimodal endpoints, the image are sent with
``configs/prompts/lrv_instructions.txt``; the reply must be a JSON list of ``{question, answer,
task}`` whose tasks are known, answers non-empty and under ``max_answer_words`` words.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.builders.llm_backend import LLMBackend, Request, load_prompt, no_reply, parse_json_reply
from mmalign.builders.lrv_rules import NEGATIVE_KINDS, POSITIVE_TASKS, Instruction, Vocab, lrv_instructions
from mmalign.builders.runner import Built, Item, default_id, record_rng
from mmalign.builders.scene import SceneDesc, scene_from_record
from mmalign.data.formats import RecordError


@dataclass
class LRVOptions:
    """Knobs of the LRV builder.

    Attributes:
        per_image: instructions per image (positives + negatives).
        ratio: positives : negatives, e.g. ``(1, 1)``.
        tasks: positive tasks to draw from.
        kinds: negative kinds to draw from.
        seed: seed of every random choice (per image, order independent).
        image_size: side of square images when records give no width/height (ShapeWorld: 60).
        media_root: folder image paths are relative to (checked to exist when set).
        max_answer_words: LLM back-end: longer answers are rejected.
        prompt: LLM back-end prompt file (name in ``configs/prompts/`` or a path).
    """

    per_image: int = 6
    ratio: tuple[int, int] = (1, 1)
    tasks: tuple[str, ...] = tuple(POSITIVE_TASKS)
    kinds: tuple[str, ...] = NEGATIVE_KINDS
    seed: int = 0
    image_size: float | None = None
    media_root: str | None = None
    max_answer_words: int = 30
    prompt: str = "lrv_instructions"
    vocab: Vocab = field(default_factory=Vocab)

    def __post_init__(self) -> None:
        self.ratio = tuple(int(v) for v in self.ratio)  # type: ignore[assignment]
        if len(self.ratio) != 2 or min(self.ratio) < 0 or sum(self.ratio) == 0:
            raise ValueError(f"ratio must be two non-negative integers, not both 0; got {self.ratio}")
        if self.per_image < 1:
            raise ValueError("per_image must be ≥ 1")
        unknown = (set(self.tasks) - set(POSITIVE_TASKS)) | (set(self.kinds) - set(NEGATIVE_KINDS))
        if unknown:
            raise ValueError(
                f"unknown tasks/kinds {sorted(unknown)}; tasks {list(POSITIVE_TASKS)}, kinds {list(NEGATIVE_KINDS)}"
            )

    @property
    def split(self) -> tuple[int, int]:
        """``(n_positive, n_negative)`` per image."""
        p, n = self.ratio
        pos = round(self.per_image * p / (p + n))
        return pos, self.per_image - pos


def lrv_record(scene: SceneDesc, inst: Instruction) -> dict[str, Any]:
    """LRV format."""
    rec: dict[str, Any] = {
        "image_id": scene.id,
        "image": scene.image,
        "question": inst.question,
        "answer": inst.answer,
        "task": inst.task,
    }
    if inst.kind:
        rec["negative_type"] = inst.kind
    return rec


def llava_record(scene: SceneDesc, inst: Instruction, k: int) -> dict[str, Any]:
    """LLaVA format (one single-turn conversation per instruction)."""
    human = f"<image>\n{inst.question}" if scene.image else inst.question
    rec: dict[str, Any] = {
        "id": f"{scene.id}-lrv{k}",
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": inst.answer}],
        "task": inst.kind or inst.task,
    }
    if scene.image:
        rec["image"] = scene.image
    return rec


def _built(scene: SceneDesc, insts: Sequence[Instruction]) -> Built:
    counts = Counter(i.kind or i.task for i in insts)
    counts["positive"] = sum(i.kind is None for i in insts)
    counts["negative"] = len(insts) - counts["positive"]
    return Built(
        {
            "lrv": [lrv_record(scene, i) for i in insts],
            "llava": [llava_record(scene, i, k) for k, i in enumerate(insts)],
        },
        dict(counts),
    )


def dense_caption_lines(scene: SceneDesc) -> str:
    """LRV's GPT-4 input: one ``caption: X: Y: Width: Height:`` line per object."""
    lines = []
    for t in scene.things:
        if t.box:
            x, y, w, h = (round(v) for v in t.box)
            lines.append(f"{t.describe()}: X: {x} Y: {y} Width: {w} Height: {h}")
        else:
            lines.append(t.describe())
    return "\n".join(lines) or "(no objects)"


_VIDEO = Built({}, {"skipped_video": 1})


class LRVBuilder:
    """Rule-based or LLM LRV builder for :func:`mmalign.builders.runner.run_builder`."""

    name = "lrv"
    outputs = ("lrv", "llava")
    output_formats = {"lrv": "lrv", "llava": "llava"}  # every written record passes the trainers' checks

    def __init__(self, options: LRVOptions, llm: LLMBackend | None = None) -> None:
        self.opt = options
        self.llm = llm
        self.template = load_prompt(options.prompt) if llm else None

    @property
    def media_root(self) -> str | None:
        return self.opt.media_root

    def record_id(self, rec: Mapping[str, Any], where: str) -> str:
        return default_id(rec, where)

    def _scene(self, item: Item) -> SceneDesc:
        scene = scene_from_record(item.record, item.where, self.opt.image_size)
        if self.opt.media_root and scene.image and not (Path(self.opt.media_root) / scene.image).is_file():
            raise RecordError(f"{item.where}: image not found: {Path(self.opt.media_root) / scene.image}")
        return scene

    def build(self, items: Sequence[Item]) -> list[Built | Exception]:
        scenes: list[SceneDesc | Built | Exception] = []
        for item in items:
            if item.record.get("kind") == "video":
                scenes.append(_VIDEO)
                continue
            try:
                scenes.append(self._scene(item))
            except (RecordError, ValueError, KeyError, TypeError) as exc:
                scenes.append(exc)
        if self.llm is None:
            return [s if isinstance(s, (Exception, Built)) else self._rules(s) for s in scenes]
        return self._llm(scenes)

    def _rules(self, scene: SceneDesc) -> Built:
        n_pos, n_neg = self.opt.split
        rng = record_rng(self.opt.seed, self.name, scene.id)
        insts = lrv_instructions(scene, rng, n_pos, n_neg, self.opt.tasks, self.opt.kinds, self.opt.vocab)
        return _built(scene, insts)

    def _request(self, scene: SceneDesc) -> Request:
        n_pos, n_neg = self.opt.split
        text = self.template.format(  # type: ignore[union-attr]
            captions=dense_caption_lines(scene),
            n_positive=n_pos,
            n_negative=n_neg,
            tasks=", ".join(self.opt.tasks),
            kinds=", ".join(self.opt.kinds),
            max_words=self.opt.max_answer_words,
        )
        images = [Path(self.opt.media_root or ".") / scene.image] if scene.image else []
        return Request(text, images)

    def validate(self, text: str) -> list[Instruction]:
        """Parse and check an LLM reply (raises ``ValueError`` so the client asks again)."""
        items = parse_json_reply(text)
        if not isinstance(items, list) or not items:
            raise ValueError("expected a non-empty JSON list")
        out = []
        for it in items:
            if not isinstance(it, dict) or not all(
                isinstance(it.get(k), str) and it[k].strip() for k in ("question", "answer", "task")
            ):
                raise ValueError(f"each item needs string question, answer and task: {it!r}")
            task = it["task"].strip()
            if len(it["answer"].split()) > self.opt.max_answer_words:
                raise ValueError(f"answer over {self.opt.max_answer_words} words")
            if task in self.opt.kinds:
                out.append(Instruction(it["question"].strip(), it["answer"].strip(), "negative", task))
            elif task in self.opt.tasks:
                out.append(Instruction(it["question"].strip(), it["answer"].strip(), task))
            else:
                raise ValueError(f"unknown task {task!r}")
        return out

    def _llm(self, scenes: list[SceneDesc | Built | Exception]) -> list[Built | Exception]:
        live = [s for s in scenes if isinstance(s, SceneDesc)]
        replies = iter(self.llm.ask_many([self._request(s) for s in live], self.validate))  # type: ignore[union-attr]
        out: list[Built | Exception] = []
        for s in scenes:
            if isinstance(s, (Exception, Built)):
                out.append(s)
                continue
            insts = next(replies)
            out.append(no_reply(self.llm.client) if insts is None else _built(s, insts))  # type: ignore[union-attr]
        return out
