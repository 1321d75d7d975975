"""Run the benchmarks on one model: where each benchmark's data come from, and which judge.

Every benchmark reads its published format when the user gives its files
(:class:`BenchmarkData`), and otherwise its **ShapeWorld** variant from a generated dataset
(``shapeworld``), judged exactly against the scene graphs. An LLM judge (any OpenAI-compatible
endpoint) is needed for MMHal-Bench, GAVIE and video QA on real data, and can be used on the
ShapeWorld variants too (``judge_shapeworld``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.data.processor import MultimodalProcessor
from mmalign.eval import chair as chair_mod
from mmalign.eval import gavie, mmhal, pope, video_qa
from mmalign.eval.answers import PARSERS
from mmalign.eval.common import GenerationOptions, answer, question
from mmalign.eval.shapeworld import CAPTION_PROMPT, _read_jsonl
from mmalign.llm.client import ChatClient
from mmalign.models.lmm import LMM
from mmalign.shapeworld import Scene, chair

BENCHMARKS = ("pope", "chair", "mmhal", "gavie", "videoqa")


@dataclass
class BenchmarkData:
    """Data of each benchmark (paths are local; nothing is downloaded).

    Attributes:
        shapeworld: a ShapeWorld dataset folder, used by every benchmark without its own files.
        split: ShapeWorld split to evaluate.
        n: items per ShapeWorld benchmark (POPE: probes per split; CHAIR: images).
        pope_files / pope_images: POPE jsonl files and their image folder.
        pope_parser: how POPE answers are read: ``reference`` (POPE's rule), ``reference-exact``
            or ``strict`` (:mod:`mmalign.eval.answers`).
        coco_synonyms / coco_instances / coco_captions / coco_images / chair_n: CHAIR on COCO
            (``coco_synonyms`` None: the CHAIR authors' list shipped with mmalign).
        mmhal_file / mmhal_images, gavie_file / gavie_images, videoqa_file / videoqa_videos.
        videoqa_judge: the LLM judge's video QA protocol, ``videochatgpt`` or ``hound``
            (caption-grounded; records need ``caption``) — :mod:`mmalign.eval.video_qa`.
        judge_shapeworld: use the LLM judge (when given) on ShapeWorld variants too.
    """

    shapeworld: Path | None = None
    split: str = "test"
    n: int = 100
    pope_files: list[Path] = field(default_factory=list)
    pope_images: Path | None = None
    pope_parser: str = "reference"
    coco_synonyms: Path | None = None
    coco_instances: Path | None = None
    coco_captions: Path | None = None
    coco_images: Path | None = None
    chair_n: int = 500
    mmhal_file: Path | None = None
    mmhal_images: Path | None = None
    gavie_file: Path | None = None
    gavie_images: Path | None = None
    videoqa_file: Path | None = None
    videoqa_videos: Path | None = None
    videoqa_judge: str = "videochatgpt"
    judge_shapeworld: bool = False

    def check(self, names: list[str], has_judge: bool) -> None:
        """Fail early, naming the missing option, when a benchmark has no data or no judge."""
        unknown = [b for b in names if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
        if self.pope_parser not in PARSERS:
            raise ValueError(f"unknown POPE parser {self.pope_parser!r}; choose from {', '.join(PARSERS)}")
        if self.videoqa_judge not in video_qa.JUDGE_MODES:
            raise ValueError(
                f"unknown video QA judge {self.videoqa_judge!r}; choose from {', '.join(video_qa.JUDGE_MODES)}"
            )
        own = {
            "pope": (self.pope_files, self.pope_images, "--pope FILE... --pope-images DIR"),
            "chair": (
                self.coco_instances,
                self.coco_images,
                "--coco-instances, --coco-images",
            ),
            "mmhal": (self.mmhal_file, self.mmhal_images, "--mmhal FILE --mmhal-images DIR"),
            "gavie": (self.gavie_file, self.gavie_images, "--gavie FILE --gavie-images DIR"),
            "videoqa": (self.videoqa_file, self.videoqa_videos, "--videoqa FILE --videoqa-videos DIR"),
        }
        for name in names:
            files, folder, flags = own[name]
            if files and folder is None:
                raise ValueError(f"{name}: give the media folder too ({flags})")
            if not files and self.shapeworld is None:
                raise ValueError(f"{name}: no data; pass {flags} or --data SHAPEWORLD_DIR")
            if files and name in ("mmhal", "gavie", "videoqa") and not has_judge:
                raise ValueError(f"{name} on its own data needs an LLM judge (--judge-model / MMALIGN_LLM_*)")
        if "videoqa" in names and self.videoqa_file:
            try:  # every record's video (and caption for the hound judge), before any model is loaded
                video_qa.load_video_qa(self.videoqa_file, self.videoqa_videos, self.videoqa_judge)
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from exc


def _shapeworld_chair(
    model: LMM, processor: MultimodalProcessor, data: BenchmarkData, gen: GenerationOptions
) -> dict:
    root = Path(data.shapeworld)
    scenes = [
        Scene.from_dict(s)
        for s in _read_jsonl(root / "scenes" / f"{data.split}.jsonl")
        if s.get("kind", "image") == "image"
    ][: data.n]
    examples = [question(s.id, CAPTION_PROMPT, root / "images" / f"{s.id}.png") for s in scenes]
    caps = answer(model, processor, examples, gen, "chair")
    result: dict[str, Any] = chair(caps, scenes)
    result["samples"] = [{"scene": s.id, "caption": c} for s, c in zip(scenes[:5], caps, strict=False)]
    result["records"] = []
    for scene, cap in zip(scenes, caps, strict=True):
        one = chair([cap], [scene])
        keep = ("n_mentions", "n_hallucinated", "color_wrong", "size_wrong")
        result["records"].append({"scene": scene.id, "caption": cap, **{k: one[k] for k in keep}})
    return result


def run_benchmark(
    name: str,
    model: LMM,
    processor: MultimodalProcessor,
    data: BenchmarkData,
    gen: GenerationOptions,
    judge: ChatClient | None = None,
) -> dict[str, Any]:
    """One benchmark's result dict (``source`` says which data it ran on)."""
    sw = data.shapeworld
    sw_judge = judge if data.judge_shapeworld else None
    if name == "pope":
        parser = data.pope_parser
        if data.pope_files:
            res = pope.run_pope(model, processor, data.pope_files, data.pope_images, gen, parser=parser)
            return {"source": "files", **res}
        files = pope.shapeworld_pope_files(sw, data.split)
        res = pope.run_pope(model, processor, files, sw, gen, limit=data.n, parser=parser)
        return {"source": "shapeworld", **res}
    if name == "chair":
        if data.coco_instances:
            res = chair_mod.run_chair_coco(
                model, processor, data.coco_synonyms, data.coco_instances, data.coco_images, gen,
                captions=data.coco_captions, n_images=data.chair_n,
            )  # fmt: skip
            return {"source": "coco", **res}
        return {"source": "shapeworld", **_shapeworld_chair(model, processor, data, gen)}
    if name == "mmhal":
        if data.mmhal_file:
            records = mmhal.load_mmhal(data.mmhal_file, data.mmhal_images)
            return {"source": "files", **mmhal.run_mmhal(model, processor, records, gen, judge)}
        records = mmhal.shapeworld_records(sw, data.split, data.n)
        return {"source": "shapeworld", **mmhal.run_mmhal(model, processor, records, gen, sw_judge)}
    if name == "gavie":
        if data.gavie_file:
            records = gavie.load_gavie(data.gavie_file, data.gavie_images)
            return {"source": "files", **gavie.run_gavie(model, processor, records, gen, judge)}
        records = gavie.shapeworld_records(sw, data.split, data.n)
        return {"source": "shapeworld", **gavie.run_gavie(model, processor, records, gen, sw_judge)}
    if name == "videoqa":
        if data.videoqa_file:
            mode = data.videoqa_judge
            records = video_qa.load_video_qa(data.videoqa_file, data.videoqa_videos, mode)
            return {"source": "files", **video_qa.run_video_qa(model, processor, records, gen, judge, mode)}
        records = video_qa.shapeworld_records(sw, data.split, data.n)
        if not records:
            raise ValueError(f"{sw}: the {data.split} split has no videos (generate with --n-videos)")
        result = video_qa.run_video_qa(model, processor, records, gen, sw_judge, data.videoqa_judge)
        return {"source": "shapeworld", **result}
    raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")


def run_suite(
    model: LMM,
    processor: MultimodalProcessor,
    names: list[str],
    data: BenchmarkData,
    gen: GenerationOptions,
    judge: ChatClient | None = None,
) -> dict[str, Any]:
    """``{benchmark: result}``, each with ``seconds`` taken."""
    data.check(names, judge is not None)
    out = {}
    for name in names:
        start = time.perf_counter()
        out[name] = run_benchmark(name, model, processor, data, gen, judge)
        out[name]["seconds"] = round(time.perf_counter() - start, 2)
    return out
