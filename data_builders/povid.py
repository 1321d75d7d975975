"""POVID preference data: ground-truth answers as preferred, injected hallucinations as dispreferred,
and diffusion-noised images for POVID's second dispreferred answer.

Launch (ShapeWorld: exact scene graphs joined on scene_id, noisy images written next to the data)::

    python data_builders/povid.py runs/shapeworld/llava/train.json --out runs/povid \
        --scenes runs/shapeworld/scenes/train.jsonl --world runs/shapeworld/world.json \
        --media-root runs/shapeworld --distort disk --t 500

    # any LLaVA data, injection by an OpenAI-compatible multimodal endpoint, noise applied in training
    python data_builders/povid.py llava_instruct.json --out runs/povid_llm --backend llm --distort fly \
        --llm-base-url http://127.0.0.1:8000/v1 --llm-model my-model --media-root /data/coco

Writes ``povid.jsonl`` (``id, image, conversations, rejected_conversations, injection`` [+
``noisy_image`` | ``distortion``]), ``cooccurrence.json`` (mined statistics), ``errors.jsonl`` and
``summary.json``; train with ``train/dpo.py`` (POVID's two-term loss reads the noise itself).
Every written pair has passed the trainers' record checks (:func:`mmalign.data.check.check_record`:
placeholders vs media, placeholders in answers, identical answers …); a source record whose pair
would fail them is an ``errors.jsonl`` entry instead. Re-running the same command resumes.

Departures from POVID: rule-based injection instead of GPT-4V (the paper's prompt is unreleased;
``--backend llm`` uses ``configs/prompts/povid_inject.txt``); one injected answer per record by
default (``--all-kinds``: one pair per applicable kind); noisy images on disk are clipped to [0, 1]
for PNG (``--distort fly`` keeps POVID's unclipped noise).
"""

from __future__ import annotations

import argparse
import json
import sys

from mmalign.builders.cli import add_common, llm_backend, run_kwargs, run_params
from mmalign.builders.povid import POVIDBuilder, POVIDOptions, load_scene_index, mine_stats, write_stats
from mmalign.builders.povid_rules import INJECTION_KINDS
from mmalign.builders.runner import format_summary, run_builder
from mmalign.shapeworld.world import WorldConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common(parser)
    parser.add_argument("--kinds", default=",".join(INJECTION_KINDS), help="injection kinds")
    parser.add_argument("--all-kinds", action="store_true", help="one pair per applicable kind")
    parser.add_argument(
        "--scenes", nargs="*", default=[], help="scene graphs (JSONL) joined on the records' scene_id"
    )
    parser.add_argument("--world", help="a ShapeWorld world.json (image size of the scene graphs)")
    parser.add_argument(
        "--media-root", default=None, help="image paths are relative to it (checked to exist)"
    )
    parser.add_argument("--distort", choices=("none", "disk", "fly"), default="none")
    parser.add_argument("--t", type=int, default=500, help="diffusion step of the image distortion (of 1000)")
    parser.add_argument("--noisy-dir", default="povid_noisy", help="disk: folder under --media-root")
    parser.add_argument("--prompt", default="povid_inject")
    args = parser.parse_args(argv)

    image_size = None
    if args.world:
        image_size = WorldConfig.from_dict(json.load(open(args.world))["params"]["config"]).image_size
    try:
        options = POVIDOptions(
            kinds=tuple(args.kinds.split(",")), all_kinds=args.all_kinds, seed=args.seed, distort=args.distort,
            t=args.t, media_root=args.media_root, noisy_dir=args.noisy_dir, prompt=args.prompt,
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    scenes = load_scene_index(args.scenes, image_size)
    stats = mine_stats(args.inputs, scenes)
    write_stats(args.out, stats)
    builder = POVIDBuilder(options, stats, scenes, llm_backend(args))
    summary = run_builder(builder, args.inputs, args.out, run_params(args), **run_kwargs(args))
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
