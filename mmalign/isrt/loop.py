"""Stages 5 and 6 of an i-SRT iteration — DPO on the iteration's pairs, evaluation — and the
iteration bookkeeping (which model is π_t, ``out/iterations.jsonl``, the PNG).

DPO is the library's: a :class:`~mmalign.training.run.TrainingRun` in ``out/iter_{t}/dpo/``
(resumable from its checkpoints, ``final/`` exported) whose step is
:func:`~mmalign.preference.step.preference_step` on shared-prefix groups built from the sampled
token ids (never re-tokenised) with the reference log-probs stored in the pairs — no reference
model is held. ``dpo.done`` names π_{t+1}.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mmalign.data.processor import MultimodalProcessor
from mmalign.isrt.config import ISRTConfig
from mmalign.isrt.prompts import ClipCache, PoolRecord
from mmalign.isrt.store import StageStore
from mmalign.models.checkpoint import load_model
from mmalign.preference.batch import EncodedGroup, collate_shared, group_from_ids
from mmalign.preference.scoring import PreferenceModel
from mmalign.preference.step import preference_step
from mmalign.training.parts import apply_lora, configure_parts
from mmalign.training.run import TrainingRun
from mmalign.utils import atomic_write

CURVES = (
    "eval/accuracy", "judge/oracle_agreement", "judge/ties", "pairs", "dpo/loss",
    "dpo/accuracy", "samples/response_length", "samples/dropped_identical",
)  # fmt: skip


def iteration_dir(cfg: ISRTConfig, t: int) -> Path:
    return Path(cfg.out) / f"iter_{t}"


def policy_path(cfg: ISRTConfig, t: int) -> str:
    """π_t: the start model for t = 0, else what iteration t − 1's DPO stage exported.

    Raises:
        FileNotFoundError: iteration t − 1 has not finished its DPO stage.
    """
    if t == 0:
        return cfg.model
    marker = iteration_dir(cfg, t - 1) / "dpo.done"
    if not marker.exists():
        raise FileNotFoundError(f"iteration {t - 1} has no finished DPO stage ({marker})")
    return json.loads(marker.read_text())["model"]


def read_pairs(directory: Path) -> list[dict[str, Any]]:
    """The iteration's pairs in id order (the order every rank shares)."""
    pairs = StageStore(directory, "pairs").read()
    return [pairs[k] for k in sorted(pairs)]


def pair_groups(pairs: list[dict[str, Any]], clips: ClipCache, videos: dict[str, Path]) -> list[EncodedGroup]:
    """DPO's groups ``[chosen, rejected]`` of stored pairs: the sampled token ids as sampled (never
    re-tokenised) and the clip's frames through ``clips`` (the processor's frame sampling, as in
    every earlier stage); ``videos`` maps a pair's ``video`` key to its file."""
    return [
        group_from_ids(
            p["id"],
            p["prompt_ids"],
            [p["chosen_ids"], p["rejected_ids"]],
            None,
            clips(videos[p["video"]], p["id"]),
        )
        for p in pairs
    ]


def dpo_stage(cfg: ISRTConfig, directory: Path, model_path: str, records: list[PoolRecord]) -> dict[str, Any]:
    """Stage 5: DPO from π_t on the pairs → π_{t+1} (``dpo/final``); returns the stage's record."""
    marker = directory / "dpo.done"
    if marker.exists():
        return json.loads(marker.read_text())
    pairs = read_pairs(directory)
    if not pairs:  # every judgement a tie: π_{t+1} = π_t
        result = {"model": model_path, "pairs": 0, "note": "no pairs: the iterate is unchanged"}
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            atomic_write(marker, json.dumps(result).encode())
        return result
    run_cfg = replace(cfg, out=str(directory / "dpo"), model=model_path)
    run = TrainingRun(run_cfg, "isrt-dpo")
    dev, dtype = run.device, run.dtype
    policy, tokenizer = load_model(model_path, dtype=dtype, template=cfg.template)
    if cfg.lora.enabled:
        apply_lora(policy, cfg.lora)
    groups = configure_parts(policy, cfg.parts, cfg.optim)
    media_frozen = not (cfg.parts.train_vision or cfg.parts.train_projector)
    model = PreferenceModel(policy, "none", media_frozen=media_frozen).to(dev)
    processor = MultimodalProcessor.for_model(policy, tokenizer)
    clips = ClipCache(processor)
    videos = {r.video_key: r.video for r in records}
    run.plan(len(pairs))
    optimizer, scheduler = run.optimizer(groups)
    engine = run.strategy.prepare(
        model, optimizer, scheduler, checkpointing=[policy.llm], blank_media=[policy]
    )
    if (
        run.begin([f"{len(pairs)} pairs; reference {cfg.reference_model} (stored log-probs); β={cfg.beta}"])
        is None
    ):
        raise SystemExit(2)
    sums: dict[str, float] = {}  # the stage's mean of every micro-batch's metrics (this process's)
    count = [0]

    def step(indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        chunk = [pairs[i] for i in indices]
        batch = collate_shared(pair_groups(chunk, clips, videos), processor.pad_token_id).to(dev, dtype)
        reference = torch.tensor([p["ref_logps"] for p in chunk], dtype=torch.float32)
        loss, metrics = preference_step(engine, batch, reference, cfg)
        for key, value in {"loss": float(loss.detach()), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        count[0] += 1
        return loss, metrics

    run.train(step)
    run.finish(policy)
    run.close({"final": str(directory / "dpo" / "final")}, leave_process_group=False)  # more stages follow
    result = {
        "model": str(directory / "dpo" / "final"), "pairs": len(pairs), "steps": run.total_steps,
        **{f"dpo/{k}": run.strategy.all_reduce_mean(v / max(count[0], 1)) for k, v in sorted(sums.items())},
    }  # fmt: skip
    if run.strategy.is_main:
        atomic_write(marker, json.dumps(result).encode())
    run.strategy.barrier()
    run.strategy.engines.clear()  # the engine's memory goes with this frame
    return result


EVAL_POLL_S = 1.0  # how often the other ranks look for rank 0's eval.json


def eval_stage(
    cfg: ISRTConfig, directory: Path, model_path: str, records: list[PoolRecord], strategy: Any
) -> dict:
    """Stage 6: video QA of π_{t+1} on rank 0 (exact judge on ShapeWorld truth); ``eval.json``.

    The other ranks wait for ``eval.json`` by polling the file, not in a collective: a barrier
    would time out (``DEEPSPEED_TIMEOUT``, 10 min by default) while rank 0 answers and has the
    LLM judge score a large evaluation set. (A rank 0 that dies ends the launch.)"""
    out = directory / "eval.json"
    if not out.exists() and records and strategy.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        from mmalign.eval.common import GenerationOptions
        from mmalign.eval.video_qa import run_video_qa

        lmm, tokenizer = load_model(model_path, dtype=strategy.dtype, template=cfg.template)
        lmm = lmm.to(strategy.device)
        processor = MultimodalProcessor.for_model(lmm, tokenizer)
        rows = [
            {"id": r.id, "video": r.video_key, "video_path": str(r.video), "question": r.question,
             "answer": str((r.truth or {}).get("answer", r.meta.get("answer", ""))), **({"truth": r.truth} if r.truth else {})}
            for r in records
        ]  # fmt: skip
        judge = None
        if any(r.truth is None for r in records):
            from mmalign.llm.client import ChatClient, LLMConfig

            judge = ChatClient(LLMConfig.from_env(cfg.eval.judge_base_url, cfg.eval.judge_model))
        result = run_video_qa(
            lmm.eval(),
            processor,
            rows,
            GenerationOptions(batch_size=8, max_new_tokens=cfg.eval.max_new_tokens),
            judge=judge,
        )
        summary = {k: result[k] for k in ("accuracy", "score", "n", "per_type", "judge")}
        atomic_write(out, json.dumps({**summary, "records": result["records"]}).encode())
    elif records and not strategy.is_main:
        while not out.exists():
            time.sleep(EVAL_POLL_S)
    strategy.barrier()
    if not out.exists():
        return {}
    data = json.loads(out.read_text())
    return {"eval/accuracy": data["accuracy"], "eval/score": data["score"], "eval/n": data["n"],
            **{f"eval/{k}": v for k, v in data["per_type"].items()}}  # fmt: skip


def record_iteration(cfg: ISRTConfig, t: int, row: dict[str, Any], is_main: bool) -> None:
    """Add iteration t's row to ``out/iterations.jsonl`` (once: a re-run does not repeat it; rows
    in iteration order, ``-1`` the start model's evaluation at step 0) and redraw
    ``out/iterations.png`` (rank 0)."""
    if not is_main:
        return
    path = Path(cfg.out) / "iterations.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    if not any(r.get("iteration") == t for r in rows):
        rows = sorted([*rows, {"iteration": t, "step": t + 1, **row}], key=lambda r: r["iteration"])
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    if cfg.plot:
        from mmalign.eval.plots import plot_metrics

        plot_metrics(path, list(CURVES), Path(cfg.out) / "iterations.png")
