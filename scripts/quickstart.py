"""The quickstart on the embedded default (ShapeWorld), end to end on this machine's CPU.

    make quickstart            # or: python scripts/quickstart.py [--runs runs] [--fast] [--from-scratch]

1. generate the ShapeWorld dataset of the tiny recipe (``configs/shapeworld/world.json``: the
   co-occurrence priors star→circle and triangle→square, and annotation noise that names the
   absent partner in 75 % of the training text of trigger-without-partner scenes);
2. the SFT model: by default the shipped tiny checkpoint ``checkpoints/tiny-shapeworld`` (its
   model card lists its bars and the command that made it); ``--from-scratch`` trains it instead:
   stage 0 (tokenizer + supervised tiny CLIP tower), then SFT of projector + LLM on images
   (``configs/shapeworld/sft.yaml``), on every task with videos added
   (``configs/shapeworld/sft_video.yaml``) and on the slow skills (``sft_focus.yaml``),
   DeepSpeed ZeRO-2, 2 CPU ranks; then a temporal mixer over video tokens trained on per-cell
   motion (``temporal.yaml``, one process) and a last SFT stage that reads it, with the LLM grown
   by one identity block (``sft_motion.yaml``);
3. (truth, injected hallucination) preference pairs from the train split's exact scene graphs;
4. a **control continuation**: SFT on the pairs' chosen answers with DPO's budget and optimizer
   (``configs/shapeworld/control.yaml``, ZeRO-3, 2 ranks) — what the data alone does;
5. DPO + SFT term on the pairs (``configs/dpo/tiny_shapeworld.yaml``, ZeRO-3, 2 ranks);
6. the quality bars of the SFT model, the control and DPO side by side (``eval/bars.py``), written
   to ``runs/bars.md`` / ``runs/bars.json``, and a PNG of the loss curves.

A step whose output exists is skipped (delete the folder to redo it). ``--fast`` shrinks every
step for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mmalign.eval.plots import plot_loss_curves
from mmalign.shapeworld import WorldConfig, generate

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "tiny-shapeworld"
WORLD = ROOT / "configs" / "shapeworld" / "world.json"


def outputs(runs: Path, from_scratch: bool = False) -> list[Path]:
    """Every path the quickstart creates under ``runs`` (the README's examples may point at these).

    ``tests/test_docs_paths.py`` checks that README commands, configs and docstrings refer only to
    these, to files in the repository, to outputs of the commands they show, or to the user's own
    folders; the slow quickstart test checks that each of them exists after a run.
    """
    data = runs / "shapeworld"
    made = [data, data / "pairs" / "train.jsonl"]
    if from_scratch:
        made.append(runs / "shapeworld-terse")
        for stage in ("sft", "sft-video", "sft-focus", "sft-motion", "sft-wording"):
            made += [runs / stage, runs / stage / "final", runs / stage / "metrics.jsonl"]
        made += [runs / "tiny-base", runs / "temporal"]
    for stage in ("control", "dpo"):
        made += [runs / stage, runs / stage / "final", runs / stage / "metrics.jsonl"]
    return made + [runs / "bars.md", runs / "bars.json", runs / "loss_curves.png"]


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


def run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def sft_from_scratch(terse: Path, data: Path, runs: Path, fast: bool, ranks: int) -> Path:
    """Stage 0 (tokenizer + tiny CLIP tower), the three SFT stages (images; every task with videos;
    the slow skills), the temporal mixer (stage 4) and the SFT stage that reads it (stage 5), all on
    ``terse`` (the same scenes with terse questions); then stage 6 on ``data`` (mixed wordings).

    Returns ``runs/sft-wording/final``, the counterpart of the shipped checkpoint.
    """
    base, sft, sft_video, focus = runs / "tiny-base", runs / "sft", runs / "sft-video", runs / "sft-focus"
    temporal, motion, wording = runs / "temporal", runs / "sft-motion", runs / "sft-wording"
    if not (base / "mmalign.json").exists():
        over = ["stage0.steps=150"] if fast else []
        run(
            [
                "train/stage0.py",
                "--config",
                "configs/shapeworld/tiny_preset.yaml",
                f"data={terse}",
                f"out={base}",
                *over,
            ]
        )
    for config, start, out, fast_steps, source in (
        ("configs/shapeworld/sft.yaml", base, sft, 30, terse),
        ("configs/shapeworld/sft_video.yaml", sft / "final", sft_video, 20, terse),
        ("configs/shapeworld/sft_focus.yaml", sft_video / "final", focus, 10, terse),
        ("configs/shapeworld/sft_motion.yaml", temporal, motion, 10, terse),
        ("configs/shapeworld/sft_wording.yaml", motion / "final", wording, 10, data),
    ):
        if (out / "final" / "mmalign.json").exists():
            continue
        if out == motion and not (temporal / "mmalign.json").exists():
            over = ["steps=20", "warmup=5", "eval_clips=16", "log_every=5"] if fast else []
            run(
                [
                    "train/temporal.py",
                    "--config",
                    "configs/shapeworld/temporal.yaml",
                    f"init_from={focus / 'final'}",
                    f"data={terse}",
                    f"out={temporal}",
                    *over,
                ]
            )
        over = (
            [f"max_steps={fast_steps}", "save_every=0", "optim.warmup_steps=5", "log_every=5"] if fast else []
        )
        launch(
            "train/sft.py",
            ["--config", config, f"model={start}", f"out={out}", rooted_sources(config, source), *over],
            ranks,
        )
    return wording / "final"


def rooted_sources(config: str, data: Path) -> str:
    """The ``data=`` override giving a recipe config's sources (``runs/<dataset>/...``) in ``data``."""
    sources = yaml.safe_load((ROOT / config).read_text())["data"]
    rooted = [
        {**s, "path": str(data.joinpath(*Path(s["path"]).parts[2:])), "media_root": str(data)}
        for s in sources
    ]
    return f"data={json.dumps(rooted)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mmalign quickstart on ShapeWorld")
    parser.add_argument("--runs", default="runs", help="output folder")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="a smoke run: little data, few steps")
    parser.add_argument(
        "--from-scratch", action="store_true", help="train the SFT model instead of using the shipped one"
    )
    parser.add_argument("--steps", type=int, default=150, help="DPO and control-continuation steps")
    args = parser.parse_args(argv)
    runs = Path(args.runs).resolve()
    data = runs / "shapeworld"
    fast = args.fast
    n_images, n_videos = (400, 40) if fast else (8000, 1000)
    steps = 8 if fast else args.steps
    start = time.time()

    banner(f"1/6 ShapeWorld → {data}")
    cfg = WorldConfig.from_dict(json.loads(WORLD.read_text()))
    summary = generate(data, n_images, n_videos, 0, cfg, prior_per_group=20 if fast else 100)
    print("already there, skipped" if summary.get("skipped") else f"counts: {json.dumps(summary['counts'])}")

    banner("2/6 the SFT model")
    if args.from_scratch:
        terse = runs / "shapeworld-terse"  # the same scenes, terse questions, no video noise: stages 0-5
        terse_cfg = WorldConfig.from_dict(
            {**json.loads(WORLD.read_text()), "question_style": "terse", "video_annotation_noise": 0.0}
        )
        generate(terse, n_images, n_videos, 0, terse_cfg, prior_per_group=20 if fast else 100)
        sft_model = sft_from_scratch(terse, data, runs, fast, args.ranks)
    else:
        if not (SHIPPED / "mmalign.json").exists():
            raise SystemExit(f"error: the shipped checkpoint {SHIPPED} is missing; use --from-scratch")
        sft_model = SHIPPED
    print(f"SFT model: {sft_model}")

    banner("3/6 preference pairs (truth vs injected hallucination) from the train split's scene graphs")
    pairs = data / "pairs" / "train.jsonl"
    if pairs.exists():
        print("already there, skipped")
    else:
        run(
            [
                "-m",
                "mmalign.preference.shapeworld_pairs",
                "--data",
                str(data),
                "--split",
                "train",
                "--out",
                str(pairs),
            ]
        )

    # Same data, same budget: both runs see the first steps × 32 pairs once (2 ranks × 16).
    budget = [
        f"max_steps={steps}",
        f"data=[{{path: {pairs}, media_root: {data}, max_records: {steps * 32}}}]",
    ]
    stages = {"control": runs / "control", "dpo": runs / "dpo"}
    banner(
        f"4/6 control continuation: SFT on the pairs' chosen answers, {steps} steps (ZeRO-3) → {stages['control']}"
    )
    if (stages["control"] / "final" / "mmalign.json").exists():
        print("already there, skipped")
    else:
        launch(
            "train/sft.py",
            [
                "--config",
                "configs/shapeworld/control.yaml",
                f"model={sft_model}",
                f"out={stages['control']}",
                *budget,
            ],
            args.ranks,
        )

    banner(f"5/6 DPO + SFT term on the pairs, {steps} steps (ZeRO-3) → {stages['dpo']}")
    if (stages["dpo"] / "final" / "mmalign.json").exists():
        print("already there, skipped")
    else:
        launch(
            "train/dpo.py",
            [
                "--config",
                "configs/dpo/tiny_shapeworld.yaml",
                f"model={sft_model}",
                f"out={stages['dpo']}",
                *budget,
            ],
            args.ranks,
        )

    banner("6/6 quality bars: SFT model, control, DPO (exact judges on held-out scenes)")
    n_eval = ["--n-images", "40", "--n-videos", "20", "--n-prior", "20"] if fast else []
    table = subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval" / "bars.py"),
            "--model",
            f"sft={sft_model}",
            "--model",
            f"control={stages['control'] / 'final'}",
            "--model",
            f"dpo={stages['dpo'] / 'final'}",
            "--data",
            str(data),
            "--out",
            str(runs / "bars.json"),
            *n_eval,
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    print(table)
    (runs / "bars.md").write_text(table)
    curves = {name: path for name, path in stages.items()}
    if args.from_scratch:
        curves = {
            "sft": runs / "sft",
            "sft-video": runs / "sft-video",
            "sft-focus": runs / "sft-focus",
            "sft-motion": runs / "sft-motion",
            "sft-wording": runs / "sft-wording",
            **curves,
        }
    png = plot_loss_curves(curves, runs / "loss_curves.png")
    print(f"\nbars: {runs / 'bars.md'}; loss curves: {png}")
    print(f"quickstart done in {time.time() - start:.0f} s; outputs under {runs}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
