"""LRV-Instruction data: positive and negative instructions (nonexistent element, existent element,
knowledge manipulation) from scene graphs, dense captions with boxes, or LLaVA records.

Launch (ShapeWorld scene graphs; rule-based, offline)::

    python data_builders/lrv.py runs/shapeworld/scenes/train.jsonl --out runs/lrv --world runs/shapeworld/world.json \
        --media-root runs/shapeworld --per-image 6 --ratio 1:1

    # Visual-Genome-style dense captions through an OpenAI-compatible endpoint
    MMALIGN_LLM_API_KEY=... python data_builders/lrv.py vg_regions.jsonl --out runs/lrv_vg --backend llm \
        --llm-base-url http://127.0.0.1:8000/v1 --llm-model my-model --media-root /data/vg

Writes ``lrv.jsonl`` (``image_id, image, question, answer, task`` [+ ``negative_type``]),
``llava.jsonl`` (LLaVA conversations), ``errors.jsonl`` (``where, id, reason`` per bad record) and
``summary.json``. Every written record has passed the trainers' record checks
(:func:`mmalign.data.check.check_record`); a source record whose output would fail them is an
``errors.jsonl`` entry instead. Re-running the same command resumes (finished image ids are skipped).

Departures from LRV-Instruction: the rule-based back-end writes template questions over 8 positive
tasks (captioning, object detection, attribute detection, counting, referring expression, spatial
relation, multiple-choice VQA, visual entailment) instead of GPT-4's 16 free-form tasks; knowledge
manipulation uses a table of geometric facts (``--knowledge FILE`` replaces it for other domains).
"""

from __future__ import annotations

import argparse
import json
import sys

from mmalign.builders.cli import add_common, llm_backend, run_kwargs, run_params
from mmalign.builders.lrv import LRVBuilder, LRVOptions
from mmalign.builders.lrv_rules import KNOWLEDGE, NEGATIVE_KINDS, POSITIVE_TASKS, Vocab
from mmalign.builders.runner import format_summary, run_builder
from mmalign.shapeworld.world import WorldConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common(parser)
    parser.add_argument("--per-image", type=int, default=6, help="instructions per image")
    parser.add_argument("--ratio", default="1:1", help="positives:negatives")
    parser.add_argument("--tasks", default=",".join(POSITIVE_TASKS))
    parser.add_argument("--kinds", default=",".join(NEGATIVE_KINDS), help="negative kinds")
    parser.add_argument("--world", help="a ShapeWorld world.json: image size, shape and colour vocabulary")
    parser.add_argument(
        "--image-size", type=float, default=None, help="side of square images without width/height"
    )
    parser.add_argument(
        "--media-root", default=None, help="image paths are relative to it (checked to exist)"
    )
    parser.add_argument(
        "--names", default=None, help="comma-separated object names that may be asked about when absent"
    )
    parser.add_argument(
        "--knowledge", default=None, help='JSON {"name": ["property", true_number]} for knowledge negatives'
    )
    parser.add_argument(
        "--prompt", default="lrv_instructions", help="LLM prompt (configs/prompts/ name or path)"
    )
    args = parser.parse_args(argv)

    vocab, image_size = Vocab(), args.image_size
    if args.world:
        cfg = WorldConfig.from_dict(json.load(open(args.world))["params"]["config"])
        vocab = Vocab(names=cfg.shapes, colors=cfg.colors)
        image_size = image_size or cfg.image_size
    if args.names:
        vocab = Vocab(
            tuple(n for n in args.names.split(",") if n), vocab.colors, vocab.sizes, vocab.knowledge
        )
    if args.knowledge:
        table = {k: (str(v[0]), int(v[1])) for k, v in json.load(open(args.knowledge)).items()}
        vocab = Vocab(vocab.names, vocab.colors, vocab.sizes, table)
    try:
        ratio = tuple(int(x) for x in args.ratio.split(":"))
        options = LRVOptions(
            per_image=args.per_image, ratio=ratio, tasks=tuple(args.tasks.split(",")), kinds=tuple(args.kinds.split(",")),
            seed=args.seed, image_size=image_size, media_root=args.media_root, prompt=args.prompt, vocab=vocab,
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    builder = LRVBuilder(options, llm_backend(args))
    params = run_params(
        args, knowledge_table=dict(vocab.knowledge) if dict(vocab.knowledge) != KNOWLEDGE else None
    )
    summary = run_builder(builder, args.inputs, args.out, params, **run_kwargs(args))
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
