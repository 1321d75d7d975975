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
3. the **quick efficacy study** (issue 18; ``python eval/study.py --config
   configs/study/shapeworld.yaml --quick --train-data runs/shapeworld --out runs/study``), one seed,
   on this dataset: from the SFT model, 60 optimizer steps of 32 examples each for SFT continued on
   the noisy training annotations (the *control*, what a user would otherwise run), the same on the
   exact annotations (the *clean oracle*), DPO + SFT term on (exact truth, injected hallucination)
   pairs and POVID (both stages) on the noisy annotations; every model measured on a held-out split
   with its own seed in both question wordings. Prints the table of headline metrics (natural
   wording) and writes ``runs/study/report.md`` (every metric, ✓ where a row beats its control,
   the issue's targets judged), ``runs/study/results.json``, ``runs/study/charts/`` and
   ``runs/loss_curves.png``.

A step whose output exists is skipped (delete the folder to redo it; the study resumes run by run).
``--fast`` shrinks every step for a smoke run (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml

from mmalign.eval.plots import plot_loss_curves
from mmalign.eval.study.config import DataSpec, Limits, StudyConfig, load_study
from mmalign.eval.study.methods import Context
from mmalign.eval.study.report import summary_table, write_study
from mmalign.eval.study.runner import plans, run_study
from mmalign.shapeworld import WorldConfig, generate

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "tiny-shapeworld"
WORLD = ROOT / "configs" / "shapeworld" / "world.json"
STUDY = ROOT / "configs" / "study" / "shapeworld.yaml"


def outputs(runs: Path, from_scratch: bool = False) -> list[Path]:
    """Every path the quickstart creates under ``runs`` (the README's examples may point at these).

    ``tests/test_docs_paths.py`` checks that README commands, configs and docstrings refer only to
    these, to files in the repository, to outputs of the commands they show, or to the user's own
    folders; the slow quickstart test checks that each of them exists after a run.
    """
    data, study = runs / "shapeworld", runs / "study"
    made = [data]
    if from_scratch:
        made.append(runs / "shapeworld-terse")
        for stage in ("sft", "sft-video", "sft-focus", "sft-motion", "sft-wording"):
            made += [runs / stage, runs / stage / "final", runs / stage / "metrics.jsonl"]
        made += [runs / "tiny-base", runs / "temporal"]
    made += [study, study / "report.md", study / "results.json", study / "charts" / "prior_yes.png"]
    for run in study_runs(study_config(runs, SHIPPED)):
        made += [run, run / "final", run / "metrics.jsonl"]
    return made + [runs / "loss_curves.png"]


def study_config(runs: Path, model: Path, fast: bool = False, steps: int = 0, ranks: int = 2) -> StudyConfig:
    """The quick study on the quickstart's dataset (``runs/shapeworld``) from ``model``, written to
    ``runs/study``; ``fast``: smoke sizes; ``steps``: every trained row's optimizer steps (0: the
    config's)."""
    cfg = load_study(STUDY, quick=True, out=str(runs / "study"), train_dir=str(runs / "shapeworld"))
    cfg = replace(cfg, model=str(model), ranks=ranks)
    if fast:
        steps = steps or 4
        cfg = replace(
            cfg,
            train=DataSpec(n_images=400, n_videos=40, seed=0, prior_per_group=20),
            eval=DataSpec(n_images=40, n_videos=8, seed=1234, val_frac=0.0, test_frac=0.8, prior_per_group=6),
            limits=Limits(n_images=8, n_videos=4, n_prior=6, batch_size=16, n_mmhal=8),
        )
    if steps:
        cfg = replace(cfg, methods=[replace(m, steps=steps if m.seeded else m.steps) for m in cfg.methods])
    return cfg


def study_runs(cfg: StudyConfig) -> list[Path]:
    """The training run folders of the study's rows (each has ``final/`` and ``metrics.jsonl``)."""
    out = Path(cfg.out)
    ctx = Context(
        Path(cfg.model), Path(cfg.train_dir or out / "data" / "train"), out / "work", out / "runs", cfg.ranks
    )
    return [run for p in plans(cfg, ctx) for run in p.runs]


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
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="optimizer steps of every study row (default: the config's quick steps)",
    )
    args = parser.parse_args(argv)
    runs = Path(args.runs).resolve()
    data = runs / "shapeworld"
    fast = args.fast
    n_images, n_videos = (400, 40) if fast else (8000, 1000)
    start = time.time()

    banner(f"1/3 ShapeWorld → {data}")
    cfg = WorldConfig.from_dict(json.loads(WORLD.read_text()))
    summary = generate(data, n_images, n_videos, 0, cfg, prior_per_group=20 if fast else 100)
    print("already there, skipped" if summary.get("skipped") else f"counts: {json.dumps(summary['counts'])}")

    banner("2/3 the SFT model")
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

    banner("3/3 the quick efficacy study: SFT | control | clean oracle | DPO | POVID (eval/study.py --quick)")
    study = study_config(runs, sft_model, fast, args.steps, args.ranks)
    results = run_study(study)
    report = write_study(results, study.out)
    print(summary_table(results))
    print(
        f"\n{len(results['rows'])} models, {study.methods[-1].steps} steps of 32 each, one seed (a smoke "
        f"run: the full study has 3 seeds); every metric and the targets in {Path(study.out) / 'report.md'} "
        f"({len(report.splitlines())} lines)"
    )
    trained = [Path(r["checkpoint"]).parent for r in results["rows"] if r["method"] != "sft"]
    curves = {run.relative_to(Path(study.out) / "runs").as_posix(): run for run in trained}
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
    print(f"loss curves: {png}")
    print(f"quickstart done in {time.time() - start:.0f} s; outputs under {runs}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
