"""Align²LLaVA instruction curation: reward-model pairs, scoring, cascaded selection, style rewriting,
and the ShapeWorld report (SFT on the curated 10 % vs the full set).

Launch::

    # 1. f_Q / g_A preference pairs from exact ShapeWorld scene graphs (POVID format)
    python data_builders/align2llava.py pairs --data runs/shapeworld --out runs/a2l/rm --first 2000 --n 2000
    # 2. train both reward models (Bradley–Terry) with the reward trainer
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 train/reward.py --config configs/reward/tiny_shapeworld.yaml \
        model=runs/sft/final out=runs/a2l/rm/question "data=[{path: runs/a2l/rm/fq_pairs.jsonl, media_root: runs/shapeworld}]" reward_prompt=null
    #    (same with ga_pairs.jsonl → runs/a2l/rm/answer)
    # 3. score a LLaVA corpus, keep 10 % (30 % by f_Q, then the best by g_A), rewrite with the inner LLM
    python data_builders/align2llava.py score corpus.json --out runs/a2l/score --question-rm runs/a2l/rm/question/final \
        --answer-rm runs/a2l/rm/answer/final --media-root runs/shapeworld
    python data_builders/align2llava.py select corpus.json --scores runs/a2l/score/scores.jsonl --out runs/a2l/selected.jsonl --keep 0.1 --question-keep 0.3
    python data_builders/align2llava.py rewrite runs/a2l/selected.jsonl --out runs/a2l/rewrite --rewrite inner --model runs/sft/final
    # the whole ShapeWorld experiment (resumable)
    nice -n 15 python data_builders/align2llava.py report --data runs/shapeworld --out runs/a2l_report --base runs/tiny-base

Departures from Align²LLaVA (no public code): preference annotations come from scene graphs, not
experts; the rewrite meaning check compares objects/attributes/numbers/positions by ShapeWorld's
vocabulary (plus colour words and digits), not an LLM judge; a rejected rewrite keeps the original.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmalign.builders.align2llava import scene_rm_pairs
from mmalign.builders.align2llava_curate import RewriteBuilder, ScoreBuilder, select_records
from mmalign.builders.align2llava_report import format_report, run_report
from mmalign.builders.cli import llm_backend, run_kwargs, run_params
from mmalign.builders.io import read_jsonl
from mmalign.builders.povid_rules import CooccurrenceStats
from mmalign.builders.runner import format_summary, run_builder
from mmalign.builders.scene import scene_from_record
from mmalign.shapeworld import Scene, WorldConfig
from mmalign.utils import atomic_write


def _pairs(args: argparse.Namespace) -> int:
    data = Path(args.data)
    cfg = WorldConfig.from_dict(json.loads((data / "world.json").read_text())["params"]["config"])
    scenes = [
        s for s in read_jsonl(data / "scenes" / f"{args.split}.jsonl") if s.get("kind", "image") == "image"
    ]
    scenes = scenes[args.first : args.first + args.n]
    stats = CooccurrenceStats.from_scenes(scene_from_record(s, s["id"], cfg.image_size) for s in scenes)
    fq, ga = [], []
    for s in scenes:
        a, b = scene_rm_pairs(Scene.from_dict(s), s["image"], cfg, stats, args.seed)
        fq += a
        ga += b
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, recs in (("fq_pairs.jsonl", fq), ("ga_pairs.jsonl", ga)):
        atomic_write(out / name, "".join(json.dumps(r) + "\n" for r in recs).encode())
    print(f"{len(fq)} f_Q pairs, {len(ga)} g_A pairs from {len(scenes)} scenes → {out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.preference.reward_model import load_reward_model

    q_rm, q_tok = load_reward_model(args.question_rm)
    a_rm, a_tok = load_reward_model(args.answer_rm)
    builder = ScoreBuilder(
        (q_rm, MultimodalProcessor.for_model(q_rm.lmm, q_tok)),
        (a_rm, MultimodalProcessor.for_model(a_rm.lmm, a_tok)),
        args.media_root,
    )
    args.backend = "rules"
    summary = run_builder(builder, args.inputs, args.out, run_params(args), **run_kwargs(args))
    print(format_summary(summary))
    return 0


def _rewrite(args: argparse.Namespace) -> int:
    inner = None
    if args.rewrite == "inner":
        from mmalign.data.processor import MultimodalProcessor
        from mmalign.models.checkpoint import load_model

        model, tok = load_model(args.model)
        inner = (model, MultimodalProcessor.for_model(model, tok))
    args.backend = "llm" if args.rewrite == "llm" else "rules"
    builder = RewriteBuilder(args.rewrite, inner=inner, llm=llm_backend(args), prompt=args.prompt)
    summary = run_builder(builder, args.inputs, args.out, run_params(args), **run_kwargs(args))
    print(format_summary(summary))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--commit-every", type=int, default=256)
    p.add_argument("--no-progress", action="store_true")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs", help="f_Q and g_A preference pairs from ShapeWorld scene graphs")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument(
        "--first", type=int, default=0, help="first scene index (keep RM scenes apart from the corpus)"
    )
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("score", help="f_Q / g_A rewards of LLaVA records")
    _common(p)
    p.add_argument("--question-rm", required=True)
    p.add_argument("--answer-rm", required=True)
    p.add_argument("--media-root", required=True)
    p = sub.add_parser("select", help="cascaded selection over scores")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--scores", required=True)
    p.add_argument("--out", required=True, help="JSONL of kept records")
    p.add_argument("--keep", type=float, default=0.1)
    p.add_argument("--question-keep", type=float, default=0.3)
    p = sub.add_parser("rewrite", help="style rewriting with a meaning-preservation check")
    _common(p)
    p.add_argument("--rewrite", choices=("none", "inner", "llm"), default="inner")
    p.add_argument("--model", help="inner: the LMM whose LLM rewrites")
    p.add_argument("--prompt", default="align2llava_rewrite")
    p.add_argument("--llm-base-url", default=None)
    p.add_argument("--llm-model", default=None)
    p.add_argument("--llm-concurrency", type=int, default=4)
    p.add_argument("--llm-retries", type=int, default=4)
    p.add_argument("--llm-timeout", type=float, default=120.0)
    p.add_argument("--llm-max-tokens", type=int, default=512)
    p.add_argument("--llm-no-images", action="store_true")
    p = sub.add_parser("report", help="the ShapeWorld experiment: curated 10 %% vs full set")
    p.add_argument("--data", default="runs/shapeworld")
    p.add_argument("--out", default="runs/align2llava_report")
    p.add_argument("--base", default="runs/tiny-base", help="SFT start and reward-model backbone")
    p.add_argument("--n-corpus", type=int, default=200, help="train scenes in the corpus")
    p.add_argument("--n-rm", type=int, default=200, help="train scenes for reward-model pairs")
    p.add_argument("--bad-share", type=float, default=0.5)
    p.add_argument("--rm-steps", type=int, default=100)
    p.add_argument("--sft-steps", type=int, default=300)
    p.add_argument("--keep", type=float, default=0.1)
    p.add_argument("--question-keep", type=float, default=0.3)
    p.add_argument("--rewrite", choices=("none", "inner"), default="inner")
    p.add_argument("--rewrite-model", default=None, help="inner LLM (default: --base)")
    p.add_argument("--eval-images", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "pairs":
        return _pairs(args)
    if args.cmd == "score":
        return _score(args)
    if args.cmd == "rewrite":
        if args.rewrite == "inner" and not args.model:
            parser.error("--rewrite inner needs --model")
        return _rewrite(args)
    if args.cmd == "select":
        print(json.dumps(select_records(args.inputs, args.scores, args.out, args.keep, args.question_keep)))
        return 0
    report = run_report(
        args.data, args.out, args.base, args.n_corpus, args.n_rm, args.bad_share, args.rm_steps, args.sft_steps,
        args.keep, args.question_keep, args.rewrite, args.rewrite_model, args.eval_images, args.seed,
    )  # fmt: skip
    print(format_report(report))
    print(f"→ {Path(args.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
