"""The quickstart on the embedded default (ShapeWorld), end to end on this machine's CPU.

    make quickstart            # or: python scripts/quickstart.py [--runs runs] [--fast]

1. generate a ShapeWorld dataset (images, mp4 videos, scene graphs, LLaVA records, POPE files);
2. build the tiny preset: BPE tokenizer, stage-0 pretrained tiny CLIP tower (frozen), projector,
   tiny Llama — an ordinary checkpoint directory;
3. SFT stage 1 (projector on captions) and stage 2 (projector + LLM on captions and QA), each
   under DeepSpeed ZeRO-3 with 2 CPU ranks (``deepspeed --num_gpus 2``, gloo);
4. evaluate the final checkpoint on the held-out test split with the exact judges (QA accuracy by
   type, POPE F1 and yes-ratio, CHAIR), print the table, and save a PNG of the loss curves.

A step whose output exists is skipped (delete the folder to redo it). ``--fast`` shrinks every
step for a smoke run (about 3 minutes).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mmalign.eval.plots import plot_loss_curves
from mmalign.shapeworld import WorldConfig, generate

ROOT = Path(__file__).resolve().parent.parent


def banner(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, args: list[str], ranks: int) -> None:
    """Run a training script under the deepspeed launcher (CPU: gloo, one thread per rank)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if "DS_ACCELERATOR" not in env:
        import torch

        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
    # `deepspeed --num_gpus N ...`, through this interpreter (the console script may be outside a venv).
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),  # not DeepSpeed's default 29500, which another job may hold
        str(ROOT / script),
        *args,
    ]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mmalign quickstart on ShapeWorld")
    parser.add_argument("--runs", default="runs", help="output folder")
    parser.add_argument("--n-images", type=int, default=4000)
    parser.add_argument("--n-videos", type=int, default=200)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="a smoke run: little data, few steps")
    args = parser.parse_args(argv)
    runs = Path(args.runs).resolve()
    data, base = runs / "shapeworld", runs / "tiny-base"
    stage1, stage2 = runs / "sft-stage1", runs / "sft-stage2"
    n_images, n_videos = (400, 20) if args.fast else (args.n_images, args.n_videos)
    steps1, steps2 = (10, 30) if args.fast else (60, 400)
    start = time.time()

    banner(f"1/5 ShapeWorld → {data}")
    summary = generate(data, n_images, n_videos, args.seed, WorldConfig())
    print(
        "already there, skipped" if summary.get("skipped") else f"train split: {summary['counts']['train']}"
    )

    banner(f"2/5 tiny preset: tokenizer + stage-0 vision encoder → {base}")
    if (base / "mmalign.json").exists():
        print("already there, skipped")
    else:
        over = ["stage0.steps=150"] if args.fast else []
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "train" / "stage0.py"),
                "--config",
                str(ROOT / "configs/shapeworld/tiny_preset.yaml"),
                f"data={data}",
                f"out={base}",
                *over,
            ],
            check=True,
            cwd=ROOT,
        )

    banner(f"3/5 SFT stage 1 (projector on captions, ZeRO-3, {args.ranks} ranks) → {stage1}")
    if (stage1 / "final" / "mmalign.json").exists():
        print("already there, skipped")
    else:
        launch(
            "train/sft.py",
            [
                "--config",
                "configs/sft/tiny_shapeworld_stage1.yaml",
                f"model={base}",
                f"out={stage1}",
                f"max_steps={steps1}",
                f"data=[{{path: {data}/llava/train.json, media_root: {data}, "
                f"tasks: [caption, short_caption]}}]",
            ],
            args.ranks,
        )

    banner(f"4/5 SFT stage 2 (projector + LLM on captions and QA, ZeRO-3, {args.ranks} ranks) → {stage2}")
    if (stage2 / "final" / "mmalign.json").exists():
        print("already there, skipped")
    else:
        launch(
            "train/sft.py",
            [
                "--config",
                "configs/sft/tiny_shapeworld_stage2.yaml",
                f"model={stage1}/final",
                f"out={stage2}",
                f"max_steps={steps2}",
                f"data=[{{path: {data}/llava/train.json, media_root: {data}}}]",
            ],
            args.ranks,
        )

    banner("5/5 evaluate the SFT model on the held-out test split (exact judges)")
    n_eval = "40" if args.fast else "200"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval" / "shapeworld_eval.py"),
            "--model",
            str(stage2 / "final"),
            "--data",
            str(data),
            "--split",
            "test",
            "--n-images",
            n_eval,
            "--n-videos",
            "20",
            "--out",
            str(stage2 / "eval_test.json"),
        ],
        check=True,
        cwd=ROOT,
    )
    png = plot_loss_curves(
        {"stage 1 (projector)": stage1, "stage 2 (projector + LLM)": stage2}, runs / "loss_curves.png"
    )
    print(f"\nloss curves: {png}")
    print(f"quickstart done in {time.time() - start:.0f} s; outputs under {runs}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
