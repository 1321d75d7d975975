"""Evaluate one or more checkpoints on POPE, CHAIR, MMHal-Bench, GAVIE and video QA, side by side.

    # the embedded default: ShapeWorld variants of every benchmark, judged exactly
    python eval/run.py --model checkpoints/tiny-shapeworld --model runs/dpo/final --data runs/shapeworld \
        --benchmarks pope,chair,mmhal,gavie,videoqa --n 200 --out runs/eval

    # published benchmarks from local files; an OpenAI-compatible judge for MMHal/GAVIE/video QA
    MMALIGN_LLM_BASE_URL=http://127.0.0.1:8001/v1 MMALIGN_LLM_API_KEY=... \
    python eval/run.py --model /ckpt/llava-1.5-7b-hf --judge-model gpt-4o \
        --pope coco_pope_random.json coco_pope_popular.json coco_pope_adversarial.json --pope-images val2014 \
        --coco-synonyms synonyms.txt --coco-instances instances_val2014.json \
        --coco-captions captions_val2014.json --coco-images val2014 \
        --mmhal response_template.json --mmhal-images mmhal/images \
        --gavie gavie.jsonl --gavie-images vg/images --videoqa msvd_qa.json --videoqa-videos msvd/videos

Writes to ``--out``: ``results.json`` (every metric, per checkpoint and benchmark),
``records/<checkpoint>/<benchmark>.json`` (each item with the model's answer and its judgement;
MMHal's keep the template's fields), ``table.md`` (headline metrics, checkpoints side by side,
best in bold) and ``charts/<benchmark>.png``; prints the table. Answers are greedy, batched and
KV-cached. Rules and departures of each benchmark: the docstrings of ``mmalign/eval/*.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.common import GenerationOptions
from mmalign.eval.report import markdown_table, plot_benchmarks
from mmalign.eval.suite import BENCHMARKS, BenchmarkData, run_suite
from mmalign.llm.client import ChatClient, LLMConfig
from mmalign.models.checkpoint import load_model


def _names(models: list[str]) -> list[str]:
    """Short unique labels: the folder name, or ``parent/name`` when names clash."""
    short = [Path(m).resolve().name for m in models]
    labels = [
        f"{Path(m).resolve().parent.name}/{s}" if short.count(s) > 1 else s
        for m, s in zip(models, short, strict=True)
    ]
    return [f"{lab}#{i + 1}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="checkpoint dir (repeat to compare)")
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS), help=f"comma list of {','.join(BENCHMARKS)}")
    p.add_argument(
        "--data", type=Path, help="ShapeWorld dataset: data of every benchmark without its own files"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=100, help="items per ShapeWorld benchmark")
    p.add_argument("--out", type=Path, default=Path("runs/eval"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--pope", nargs="+", type=Path, default=[], help="POPE jsonl files (one per split)")
    p.add_argument("--pope-images", type=Path)
    p.add_argument("--coco-synonyms", type=Path)
    p.add_argument("--coco-instances", type=Path)
    p.add_argument("--coco-captions", type=Path)
    p.add_argument("--coco-images", type=Path)
    p.add_argument("--chair-n", type=int, default=500, help="COCO images captioned for CHAIR")
    p.add_argument("--mmhal", type=Path, help="MMHal-Bench response_template.json")
    p.add_argument("--mmhal-images", type=Path)
    p.add_argument("--gavie", type=Path, help="GAVIE records {image, instruction, regions}")
    p.add_argument("--gavie-images", type=Path)
    p.add_argument("--videoqa", type=Path, help="video QA records {video, question, answer}")
    p.add_argument("--videoqa-videos", type=Path)
    p.add_argument("--judge-model", help="LLM judge model name (endpoint from MMALIGN_LLM_BASE_URL)")
    p.add_argument("--judge-base-url", help="overrides MMALIGN_LLM_BASE_URL / OPENAI_BASE_URL")
    p.add_argument("--judge-concurrency", type=int, default=4)
    p.add_argument("--judge-shapeworld", action="store_true", help="LLM judge on ShapeWorld variants too")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    data = BenchmarkData(
        shapeworld=args.data, split=args.split, n=args.n,
        pope_files=args.pope, pope_images=args.pope_images,
        coco_synonyms=args.coco_synonyms, coco_instances=args.coco_instances,
        coco_captions=args.coco_captions, coco_images=args.coco_images, chair_n=args.chair_n,
        mmhal_file=args.mmhal, mmhal_images=args.mmhal_images,
        gavie_file=args.gavie, gavie_images=args.gavie_images,
        videoqa_file=args.videoqa, videoqa_videos=args.videoqa_videos,
        judge_shapeworld=args.judge_shapeworld,
    )  # fmt: skip
    judge = None
    if args.judge_model or args.judge_base_url:
        cfg = LLMConfig.from_env(args.judge_base_url, args.judge_model, concurrency=args.judge_concurrency)
        judge = ChatClient(cfg)
    try:
        data.check(names, judge is not None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gen = GenerationOptions(args.batch_size, args.max_new_tokens, progress=not args.no_progress)

    results: dict[str, dict] = {}
    bar = tqdm(
        list(zip(_names(args.model), args.model, strict=True)), desc="checkpoints", disable=args.no_progress
    )
    for label, path in bar:
        bar.set_postfix_str(label)
        model, tokenizer = load_model(path)
        processor = MultimodalProcessor.for_model(model, tokenizer)
        res = run_suite(model, processor, names, data, gen, judge)
        for bench, r in res.items():
            records = r.pop("records", None)
            if records is not None:
                folder = args.out / "records" / label
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{bench}.json").write_text(json.dumps(records, indent=1))
        results[label] = {"checkpoint": str(path), **res}
        del model

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown_table(results)
    (args.out / "table.md").write_text(table)
    charts = plot_benchmarks(results, args.out / "charts")
    print(table)
    print(
        f"wrote {args.out / 'results.json'}, {args.out / 'table.md'} and {len(charts)} charts in {args.out / 'charts'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
