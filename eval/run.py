"""Evaluate one or more checkpoints on POPE, CHAIR, MMHal-Bench, GAVIE and video QA, side by side.

    # the embedded default: ShapeWorld variants of every benchmark, judged exactly
    python eval/run.py --model sft=checkpoints/tiny-shapeworld --model dpo=runs/dpo/final --data runs/shapeworld \
        --benchmarks pope,chair,mmhal,gavie,videoqa --n 200 --out runs/eval

    # published benchmarks from local files; an OpenAI-compatible judge for MMHal/GAVIE/video QA
    MMALIGN_LLM_BASE_URL=http://127.0.0.1:8001/v1 MMALIGN_LLM_API_KEY=... \
    python eval/run.py --model /ckpt/llava-1.5-7b-hf --judge-model gpt-4o \
        --pope coco_pope_random.json coco_pope_popular.json coco_pope_adversarial.json --pope-images val2014 \
        --coco-instances instances_val2014.json \
        --coco-captions captions_val2014.json --coco-images val2014 \
        --mmhal response_template.json --mmhal-images mmhal/images \
        --gavie gavie.jsonl --gavie-images vg/images --videoqa msvd_qa.json --videoqa-videos msvd/videos

    # LLaVA-Hound's caption-grounded video QA judge (what i-SRT reports): records carry 'caption',
    # videos may be folders of extracted frames
    python eval/run.py --model runs/isrt/final --judge-model gpt-4o --benchmarks videoqa \
        --videoqa hound_test_qa.jsonl --videoqa-videos frames/ --video-qa-judge hound

Models are ``NAME=DIR`` (the name heads the table column and the records folder) or a plain
``DIR``, named by its path: the folder name, with its parents while the name says only where in
a run it sits (``runs/dpo/final`` → ``dpo/final``) or clashes with another model's.

Writes to ``--out``: ``results.json`` (every metric, per model and benchmark),
``records/<name>/<benchmark>.json`` (each item with the model's answer and its judgement: POPE's
every probe with the answer, its yes/no reading and whether it fit a pattern; CHAIR's every
caption with its object mentions; MMHal's keep the template's fields), ``table.md`` (headline
metrics, models side by side, a row's single best value in bold, never a tie or a zero; rows
counting the answers and judge replies that could not be read, ⚠ when any) and
``charts/<benchmark>.png``; prints the table. POPE answers are read by POPE's own rule
(``--pope-parser reference``: a negation word in the first sentence → no, else yes; see
``mmalign/eval/answers.py``), ``reference-exact`` or ``strict``. CHAIR on COCO uses the CHAIR
authors' synonym list shipped with mmalign unless ``--coco-synonyms`` names another. Answers are
greedy, batched and KV-cached. Rules and departures of each benchmark: the docstrings of ``mmalign/eval/*.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.answers import PARSERS
from mmalign.eval.common import GenerationOptions, parse_model_specs
from mmalign.eval.report import markdown_table, plot_benchmarks
from mmalign.eval.suite import BENCHMARKS, BenchmarkData, run_suite
from mmalign.llm.client import ChatClient, LLMConfig
from mmalign.models.checkpoint import load_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", action="append", required=True, help="NAME=DIR or DIR, a checkpoint (repeat to compare)"
    )
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS), help=f"comma list of {','.join(BENCHMARKS)}")
    p.add_argument(
        "--data", type=Path, help="ShapeWorld dataset: data of every benchmark without its own files"
    )
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=100, help="items per ShapeWorld benchmark")
    p.add_argument("--out", type=Path, default=Path("runs/eval"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--template", help="chat template overriding the checkpoints': built-in name, Jinja file or source"
    )
    p.add_argument("--pope", nargs="+", type=Path, default=[], help="POPE jsonl files (one per split)")
    p.add_argument("--pope-images", type=Path)
    p.add_argument(
        "--pope-parser", choices=list(PARSERS), default="reference", help="how POPE answers are read"
    )
    p.add_argument("--coco-synonyms", type=Path, help="default: the CHAIR authors' list shipped with mmalign")
    p.add_argument("--coco-instances", type=Path)
    p.add_argument("--coco-captions", type=Path)
    p.add_argument("--coco-images", type=Path)
    p.add_argument("--chair-n", type=int, default=500, help="COCO images captioned for CHAIR")
    p.add_argument("--mmhal", type=Path, help="MMHal-Bench response_template.json")
    p.add_argument("--mmhal-images", type=Path)
    p.add_argument("--gavie", type=Path, help="GAVIE records {image, instruction, regions}")
    p.add_argument("--gavie-images", type=Path)
    p.add_argument("--videoqa", type=Path, help="video QA records {video, question, answer}")
    p.add_argument("--videoqa-videos", type=Path, help="folder of the videos: files or frame folders")
    p.add_argument(
        "--video-qa-judge",
        choices=["videochatgpt", "hound"],
        default="videochatgpt",
        help="LLM judge protocol: Video-ChatGPT's yes/no + 0-5, or LLaVA-Hound's caption-grounded 1-5 "
        "(records need 'caption'; accuracy = share of scores >= 3)",
    )
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
        pope_files=args.pope, pope_images=args.pope_images, pope_parser=args.pope_parser,
        coco_synonyms=args.coco_synonyms, coco_instances=args.coco_instances,
        coco_captions=args.coco_captions, coco_images=args.coco_images, chair_n=args.chair_n,
        mmhal_file=args.mmhal, mmhal_images=args.mmhal_images,
        gavie_file=args.gavie, gavie_images=args.gavie_images,
        videoqa_file=args.videoqa, videoqa_videos=args.videoqa_videos, videoqa_judge=args.video_qa_judge,
        judge_shapeworld=args.judge_shapeworld,
    )  # fmt: skip
    judge = None
    if args.judge_model or args.judge_base_url:
        cfg = LLMConfig.from_env(args.judge_base_url, args.judge_model, concurrency=args.judge_concurrency)
        judge = ChatClient(cfg)
    try:
        models = parse_model_specs(args.model)
        missing = [str(folder) for _, folder in models if not folder.is_dir()]
        if missing:
            raise ValueError(f"model folder(s) not found: {', '.join(missing)}")
        data.check(names, judge is not None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gen = GenerationOptions(args.batch_size, args.max_new_tokens, progress=not args.no_progress)

    results: dict[str, dict] = {}
    bar = tqdm(models, desc="checkpoints", disable=args.no_progress)
    for label, path in bar:
        bar.set_postfix_str(label)
        model, tokenizer = load_model(path, template=args.template)
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
