"""The quickstart on the embedded default (ShapeWorld), end to end on this machine's CPU.

    make quickstart            # or: python scripts/quickstart.py [--runs runs]

1. generate a ShapeWorld dataset (images, mp4 videos, scene graphs, LLaVA records, POPE files);
2. build the tiny preset: BPE tokenizer, stage-0 pretrained tiny CLIP tower (frozen), projector,
   tiny Llama — saved as an ordinary checkpoint directory;
3. load it back and run the model: LM loss on held-out records, batched KV-cached generation,
   and the exact judges (CHAIR, QA by type, POPE, video QA) on the test split.

Each step is skipped when its output already exists (delete the folder to redo it). The SFT step
that makes the tiny model actually answer arrives with the training engine; until then the
numbers in step 3 are those of an untrained language model and show that the pipeline runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from mmalign.shapeworld import WorldConfig, generate

ROOT = Path(__file__).resolve().parent.parent


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mmalign quickstart on ShapeWorld")
    parser.add_argument("--runs", default="runs", help="output folder")
    parser.add_argument("--n-images", type=int, default=4000)
    parser.add_argument("--n-videos", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    data, base = runs / "shapeworld", runs / "tiny-base"
    start = time.time()

    step(f"1/3 ShapeWorld → {data}")
    summary = generate(data, args.n_images, args.n_videos, args.seed, WorldConfig())
    print("already there, skipped" if summary.get("skipped") else f"{summary['counts']['train']} (train)")

    step(f"2/3 tiny preset (stage-0 encoder pretraining) → {base}")
    if (base / "mmalign.json").exists():
        print("already there, skipped")
    else:
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "train" / "stage0.py"),
                "--config",
                str(ROOT / "configs" / "shapeworld" / "tiny_preset.yaml"),
                f"data={data}",
                f"out={base}",
            ],
            check=True,
        )

    step("3/3 load the checkpoint, forward + generation + exact judges on the test split")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval" / "shapeworld_eval.py"),
            "--model",
            str(base),
            "--data",
            str(data),
            "--split",
            "test",
            "--n-images",
            "100",
            "--n-videos",
            "10",
            "--out",
            str(base / "eval_test.json"),
        ],
        check=True,
    )
    print(f"\nquickstart done in {time.time() - start:.0f} s; outputs under {runs}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
