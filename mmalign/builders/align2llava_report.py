"""The Align²LLaVA experiment on ShapeWorld: curate a flawed corpus to 10 %, then SFT on it vs the full set.

Steps (each skipped when its output exists, so an interrupted report resumes):

1. **corpus** — the exact LLaVA records (``llava/train_clean.json``, else ``train.json``) of the first
   ``n_corpus`` train scenes, plus, for a ``bad_share`` of them, a flawed copy: the answer with an
   injected hallucination, or an ungrounded question (an absent shape's colour) with a made-up
   answer — standing in for the flaws of machine-generated instructions. ``corrupted`` marks them.
2. **reward-model pairs** from the next ``n_rm`` scenes (disjoint from the corpus), by
   :func:`~mmalign.builders.align2llava.scene_rm_pairs`; **f_Q and g_A** trained by ``train/reward.py``.
3. **score → cascade select (keep, question_keep) → rewrite** by the inner LLM with the meaning check.
4. **SFT** (``train/sft.py``) from ``base`` on the curated subset and on the full corpus with the same
   steps; **evaluation** on the test split: QA accuracy (exact judges) and CHAIR on captions.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mmalign.builders.align2llava import scene_rm_pairs
from mmalign.builders.align2llava_curate import RewriteBuilder, ScoreBuilder, select_records
from mmalign.builders.io import read_jsonl
from mmalign.builders.povid_rules import CooccurrenceStats, injections
from mmalign.builders.runner import run_builder
from mmalign.builders.scene import scene_from_record
from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.shapeworld import CAPTION_PROMPT, _ask
from mmalign.models.checkpoint import load_model
from mmalign.preference.reward_model import load_reward_model
from mmalign.shapeworld import Scene, WorldConfig, chair, qa_correct
from mmalign.training.generation import generate_responses
from mmalign.utils import atomic_write

ROOT = Path(__file__).resolve().parents[2]
IMAGE_TASKS = (
    "caption",
    "short_caption",
    "existence",
    "color",
    "count",
    "position",
    "relation",
    "multiple_choice",
)


def _jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def _scenes(data: Path, split: str) -> list[dict[str, Any]]:
    return [r for r in read_jsonl(data / "scenes" / f"{split}.jsonl") if r.get("kind", "image") == "image"]


def build_corpus(
    data: Path, cfg: WorldConfig, n_corpus: int, bad_share: float, seed: int
) -> list[dict[str, Any]]:
    """Exact records of the first ``n_corpus`` scenes plus flawed copies (see module docstring)."""
    scenes = {s["id"]: s for s in _scenes(data, "train")[:n_corpus]}
    source = (
        data
        / "llava"
        / ("train_clean.json" if (data / "llava" / "train_clean.json").exists() else "train.json")
    )
    descs = {sid: scene_from_record(s, sid, cfg.image_size) for sid, s in scenes.items()}
    stats = CooccurrenceStats.from_scenes(descs.values())
    rng = random.Random(f"{seed}:corpus")
    out = []
    for rec in json.loads(source.read_text()):
        if rec.get("scene_id") not in scenes or rec.get("task") not in IMAGE_TASKS:
            continue
        out.append({**rec, "corrupted": False})
        if rng.random() >= bad_share:
            continue
        desc = descs[rec["scene_id"]]
        answer = rec["conversations"][1]["value"]
        flawed = injections(answer, desc, stats, rng)
        absent = [s for s in cfg.shapes if s not in desc.names()]
        if flawed and (rng.random() < 0.5 or not absent):
            conv = [rec["conversations"][0], {"from": "gpt", "value": rng.choice(flawed).text}]
            kind = "answer"
        elif absent:
            x = rng.choice(absent)
            conv = [
                {"from": "human", "value": f"<image>\nWhat color is the {x}?"},
                {"from": "gpt", "value": f"The {x} is {rng.choice(cfg.colors)}."},
            ]
            kind = "question"
        else:
            continue
        out.append(
            {**rec, "id": f"{rec['id']}-bad", "conversations": conv, "corrupted": kind, "task": rec["task"]}
        )
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: str, args: list[str], log: Path) -> None:
    """One-rank DeepSpeed run (CPU: gloo, one thread), output to ``log``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "1",
        "--master_port",
        str(_free_port()),
        str(ROOT / script),
        *args,
    ]
    print("$", " ".join(cmd), flush=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{script} failed (exit {proc.returncode}); see {log}")


def _last_metric(run: Path, key: str) -> float | None:
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    vals = [r[key] for r in read_jsonl(path) if key in r]
    return vals[-1] if vals else None


def train_reward(base: str, pairs: Path, data: Path, out: Path, steps: int, seed: int) -> Path:
    """f_Q or g_A with ``train/reward.py`` (ZeRO-0, one rank, no factual-augmentation prompt)."""
    if not (out / "final" / "reward_head.safetensors").exists():
        args = [
            "--config", "configs/reward/tiny_shapeworld.yaml", f"model={base}", f"out={out}",
            f"data=[{{path: {pairs}, media_root: {data}}}]", "reward_prompt=null", f"max_steps={steps}",
            "eval_fraction=0.1", "save_every=0", "strategy.zero_stage=0", "optim.warmup_steps=10",
            "optim.lr=5.0e-4", f"seed={seed}", "parts.train_projector=true",
        ]  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        _launch("train/reward.py", args, out / "launch.log")
    return out / "final"


def train_sft(base: str, records: Path, data: Path, out: Path, steps: int, seed: int) -> Path:
    """SFT with the tiny ShapeWorld recipe (``configs/shapeworld/sft.yaml``) for ``steps`` steps."""
    if not (out / "final" / "mmalign.json").exists():
        args = [
            "--config", "configs/shapeworld/sft.yaml", f"model={base}", f"out={out}",
            f"data=[{{path: {records}, media_root: {data}}}]", f"max_steps={steps}", "save_every=0",
            f"optim.warmup_steps={max(1, min(200, steps // 5))}", "strategy.zero_stage=0", f"seed={seed}",
        ]  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        _launch("train/sft.py", args, out / "launch.log")
    return out / "final"


def evaluate(model_dir: Path, data: Path, n_images: int, batch_size: int = 32) -> dict[str, Any]:
    """QA accuracy (overall and by type) and caption CHAIR on the first ``n_images`` test scenes."""
    model, tokenizer = load_model(model_dir)
    processor = MultimodalProcessor.for_model(model, tokenizer)
    scenes = [Scene.from_dict(s) for s in _scenes(data, "test")[:n_images]]
    keep = {s.id for s in scenes}
    captions = generate_responses(
        model, processor, [_ask(data, f"images/{s.id}.png", CAPTION_PROMPT) for s in scenes], batch_size, 72
    )
    items = [q for q in read_jsonl(data / "qa" / "test.jsonl") if q["scene_id"] in keep]
    answers = generate_responses(
        model, processor, [_ask(data, q["image"], q["question"]) for q in items], batch_size, 16
    )
    by_type: dict[str, list[bool]] = {}
    for q, a in zip(items, answers, strict=True):
        by_type.setdefault(q["type"], []).append(qa_correct(q, a))
    flat = [v for vs in by_type.values() for v in vs]
    return {
        "qa_accuracy": sum(flat) / len(flat) if flat else None,
        "qa_by_type": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_type.items())},
        "n_qa": len(flat),
        "chair": chair(captions, scenes),
        "sample_caption": captions[0] if captions else None,
    }


def run_report(
    data: str | Path,
    out: str | Path,
    base: str,
    n_corpus: int = 200,
    n_rm: int = 200,
    bad_share: float = 0.5,
    rm_steps: int = 100,
    sft_steps: int = 300,
    keep: float = 0.1,
    question_keep: float = 0.3,
    rewrite: str = "inner",
    rewrite_model: str | None = None,
    eval_images: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Run (or resume) the whole experiment; returns and writes ``report.json``."""
    data, out = Path(data).resolve(), Path(out).resolve()
    cfg = WorldConfig.from_dict(json.loads((data / "world.json").read_text())["params"]["config"])
    t0 = time.time()
    timings: dict[str, float] = {}

    corpus_path = out / "corpus.jsonl"
    if not corpus_path.exists():
        _jsonl(corpus_path, build_corpus(data, cfg, n_corpus, bad_share, seed))
    corpus = read_jsonl(corpus_path)

    fq_path, ga_path = out / "rm" / "fq_pairs.jsonl", out / "rm" / "ga_pairs.jsonl"
    if not ga_path.exists():
        rm_scenes = _scenes(data, "train")[n_corpus : n_corpus + n_rm]
        descs = [scene_from_record(s, s["id"], cfg.image_size) for s in rm_scenes]
        stats = CooccurrenceStats.from_scenes(descs)
        fq, ga = [], []
        for s in rm_scenes:
            a, b = scene_rm_pairs(Scene.from_dict(s), s["image"], cfg, stats, seed)
            fq += a
            ga += b
        _jsonl(fq_path, fq)
        _jsonl(ga_path, ga)
    timings["data_s"] = time.time() - t0

    t = time.time()
    fq_dir = train_reward(base, fq_path, data, out / "rm" / "question", rm_steps, seed)
    ga_dir = train_reward(base, ga_path, data, out / "rm" / "answer", rm_steps, seed)
    timings["reward_models_s"] = time.time() - t

    t = time.time()
    q_rm, q_tok = load_reward_model(fq_dir)
    a_rm, a_tok = load_reward_model(ga_dir)
    scorer = ScoreBuilder(
        (q_rm, MultimodalProcessor.for_model(q_rm.lmm, q_tok)),
        (a_rm, MultimodalProcessor.for_model(a_rm.lmm, a_tok)),
        data,
    )
    score_sum = run_builder(
        scorer, [corpus_path], out / "score", {"step": "score"}, batch_size=128, progress=False
    )
    sel = select_records(
        [corpus_path], out / "score" / "scores.jsonl", out / "selected.jsonl", keep, question_keep
    )
    if rewrite == "inner":
        model, tok = load_model(rewrite_model or base)
        rewriter = RewriteBuilder("inner", inner=(model, MultimodalProcessor.for_model(model, tok)))
    else:
        rewriter = RewriteBuilder("none")
    rw_sum = run_builder(
        rewriter,
        [out / "selected.jsonl"],
        out / "rewrite",
        {"backend": rewrite},
        batch_size=64,
        progress=False,
    )
    timings["curation_s"] = time.time() - t
    curated = read_jsonl(out / "rewrite" / "curated.jsonl")

    t = time.time()
    runs = {
        "curated": train_sft(
            base, out / "rewrite" / "curated.jsonl", data, out / "sft_curated", sft_steps, seed
        ),
        "full": train_sft(base, corpus_path, data, out / "sft_full", sft_steps, seed),
    }
    timings["sft_s"] = time.time() - t
    t = time.time()
    results = {name: evaluate(path, data, eval_images) for name, path in runs.items()}
    timings["eval_s"] = time.time() - t

    n_bad = sum(bool(r["corrupted"]) for r in corpus)
    kept_bad = sum(bool(r.get("corrupted")) for r in curated)
    report = {
        "budget": {
            "n_corpus_scenes": n_corpus,
            "n_rm_scenes": n_rm,
            "bad_share": bad_share,
            "rm_steps": rm_steps,
            "sft_steps": sft_steps,
            "keep": keep,
            "question_keep": question_keep,
            "eval_images": eval_images,
            "rewrite": rewrite,
            "base": base,
        },  # fmt: skip
        "corpus": {"records": len(corpus), "corrupted": n_bad, "corrupted_share": n_bad / len(corpus)},
        "reward_models": {
            "question_heldout_accuracy": _last_metric(out / "rm" / "question", "eval/accuracy"),
            "answer_heldout_accuracy": _last_metric(out / "rm" / "answer", "eval/accuracy"),
        },
        "curation": {
            **sel,
            "scoring_errors": score_sum["total_errors"],
            "kept_corrupted_share": kept_bad / len(curated) if curated else None,
            "rewrites": {k: v for k, v in rw_sum["total_counts"].items()},
        },
        "sft": {
            name: {**res, "final_loss": _last_metric(out / f"sft_{name}", "loss")}
            for name, res in results.items()
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    atomic_write(out / "report.json", json.dumps(report, indent=2).encode())
    return report


def format_report(report: dict[str, Any]) -> str:
    """A short table of the report."""
    c, cur = report["corpus"], report["curation"]
    lines = [
        f"corpus: {c['records']} records, {c['corrupted_share']:.1%} flawed",
        f"reward models held-out accuracy: f_Q {report['reward_models']['question_heldout_accuracy']}, "
        f"g_A {report['reward_models']['answer_heldout_accuracy']}",
        f"kept {cur['kept']}/{cur['scored']} ({cur['kept_fraction']:.1%}); flawed among kept: {cur['kept_corrupted_share']:.1%}",
        f"rewrites: {cur['rewrites']}",
        f"{'SFT on':<10} {'QA acc':>7} {'CHAIR-i':>8} {'CHAIR-s':>8} {'loss':>6}",
    ]
    for name, r in report["sft"].items():
        ch = r["chair"]
        lines.append(
            f"{name:<10} {r['qa_accuracy']:>7.3f} {ch.get('chair_i', float('nan')):>8.3f} {ch.get('chair_s', float('nan')):>8.3f} "
            f"{r['final_loss'] if r['final_loss'] is not None else float('nan'):>6.3f}"
        )
    return "\n".join(lines)
