"""ShapeWorld command line.

Usage::

    python -m mmalign.shapeworld generate --out data/shapeworld --n-images 20000 --n-videos 500 --seed 0 \
        [--image-size 60 --grid 3 --annotation-noise 0.5 --faint-share 0.0 --pixel-noise 0.0 \
         --val-frac 0.1 --test-frac 0.1]

Prints the summary as JSON. Re-running with the same arguments does nothing; different arguments
into an existing dataset directory fail.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mmalign.shapeworld.generate import generate
from mmalign.shapeworld.world import WorldConfig


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one ``generate`` subcommand)."""
    parser = argparse.ArgumentParser(prog="python -m mmalign.shapeworld", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write a ShapeWorld dataset")
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--n-images", type=int, required=True)
    gen.add_argument("--n-videos", type=int, default=0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--val-frac", type=float, default=0.1)
    gen.add_argument("--test-frac", type=float, default=0.1)
    gen.add_argument("--pope-per-image", type=int, default=6)
    gen.add_argument(
        "--prior-per-group", type=int, default=100, help="violating and control prior probes, each"
    )
    gen.add_argument("--config", help="JSON file with WorldConfig fields (flags below override it)")
    defaults = WorldConfig()
    for flag, kind in (
        ("image-size", int),
        ("grid", int),
        ("min-objects", int),
        ("max-objects", int),
        ("annotation-noise", float),
        ("video-annotation-noise", float),
        ("faint-share", float),
        ("pixel-noise", float),
        ("video-frames", int),
        ("video-fps", int),
        ("question-style", str),
    ):
        name = flag.replace("-", "_")
        gen.add_argument(
            f"--{flag}",
            type=kind,
            default=None,
            help=f"WorldConfig.{name} (default {getattr(defaults, name)})",
        )
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    fields = {}
    if args.config:
        with open(args.config) as f:
            fields = json.load(f)
        fields = fields.get("params", {}).get("config", fields)  # accept a world.json too
    for name in (
        "image_size",
        "grid",
        "min_objects",
        "max_objects",
        "annotation_noise",
        "faint_share",
        "pixel_noise",
        "video_frames",
        "video_fps",
    ):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    try:
        cfg = WorldConfig.from_dict(fields)
        summary = generate(
            args.out,
            args.n_images,
            args.n_videos,
            args.seed,
            cfg,
            val_frac=args.val_frac,
            test_frac=args.test_frac,
            pope_per_image=args.pope_per_image,
            prior_per_group=args.prior_per_group,
            progress=not args.no_progress,
        )
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
