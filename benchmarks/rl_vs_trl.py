"""Critic-free RL, one iteration (rollout + update): TRL's GRPOTrainer / RLOOTrainer vs mmalign, in one run.

Launch:

    pip install -e '.[bench]'
    OMP_NUM_THREADS=1 python benchmarks/rl_vs_trl.py --timed 2 --repeats 2   # CPU size (~6 min on 2 cores)
    OMP_NUM_THREADS=1 python benchmarks/rl_vs_trl.py --quick                 # smoke size (~1 min)

**One model, both sides.** The tokenizer, seeded random-init ``LlavaForConditionalGeneration``
(small CLIP tower + projector + Llama), processor, prompts and seeded images of
``benchmarks/ppo_vs_trl.py`` (its ``build_folder``) go to a temporary folder; TRL loads it with
``from_pretrained`` (policy; reference when β ≠ 0), mmalign with
:func:`mmalign.models.llava_hf.import_llava_hf`. Vision tower and projector are frozen on both
sides (the LLM trains), so mmalign's reference reuses the policy's image features.

**The same work.** One image per prompt (64 image tokens at the CPU size); per iteration P prompts
× K samples of exactly L tokens and one optimizer step (micro-batches of m sequences: TRL
``per_device_train_batch_size=m``, ``gradient_accumulation_steps = steps_per_generation = P·K/m``,
``num_iterations=1``; mmalign ``micro_batch_size=m/K`` prompts, ``grad_accum=P·K/m``,
``ppo_epochs=1``); temperature 1, no top-k/top-p, AdamW at one constant lr, no weight decay, no
gradient clipping, fp32, no gradient checkpointing, clip ε 0.2. The reward is one Python function
of the completion text on both sides (the share of vowels among its letters; no reward model).
**Exactly L tokens:** TRL with ``generation_kwargs={"min_new_tokens": L}`` (EOS masked out of
sampling), mmalign with the processor's stop ids emptied (an EOS, p ~ 1/vocab, stays an ordinary
token). GRPO: TRL ``beta=0, loss_type="dapo", scale_rewards="group"`` ↔ mmalign ``estimator grpo,
kl_mode loss, kl_coef 0, loss_aggregation dapo, scale_rewards group``. RLOO: TRL ``beta=0.05`` (k1
KL summed over the sequence, subtracted from the reward), ``normalize_advantages=False`` ↔ mmalign
``estimator rloo, kl_mode reward, kl_coef 0.05, kl_estimator k1``, no clamp, reward_scale 1,
``loss_aggregation grpo``. mmalign's engine is built as ``train/ppo.py`` builds it for these
estimators (a ZeRO-0 DeepSpeed engine over a ``PreferenceModel`` with a frozen reference copy, a
world of one, no value model).

**Not the same, by the libraries' design:** at β = 0 TRL's GRPO loads no reference and (one
iteration, aligned steps) runs no scoring forward (ratio ``exp(logp − logp.detach())``); mmalign
always holds the frozen reference and runs one scoring forward (policy + reference) per rollout.
TRL encodes a prompt's image once per sample (K times per forward), mmalign once per prompt. TRL's
RLOO ratio is per *sequence* (``exp(Σ logp − Σ old)``), mmalign's per token and averaged per
sequence: equal loss at ratio 1, but mmalign's gradient of a sequence is TRL's divided by its
length (a constant 1/L here, which AdamW all but cancels).

**Measured.** Each system runs in its own subprocess: a warm-up iteration, then ``--timed``
iterations, the fastest kept; ``--repeats R`` runs the four subprocesses R times, interleaved,
each system's fastest kept. samples/s = P·K completions / wall time of the iteration; the
process's CPU seconds in it (less sensitive to other load on a shared machine; the verdict gives
both); its parts: rollout (TRL: ``_generate_and_score_completions``, its RLOO's reference and old
log-prob forwards included), sampling, scoring (mmalign's policy + reference forward), update (the
rest: training forwards, backward, optimizer, bookkeeping). Peak memory as
``benchmarks/dpo_vs_trl.py`` measures it (CUDA ``max_memory_allocated``; CPU ``ru_maxrss`` minus
the resident set after imports — here after the model code's imports too, on both sides, or
``import_llava_hf``'s first imports of transformers' model code, ~0.25 GiB, would count as
mmalign's memory), read before the check below runs.

**First-step loss.** In the timed runs both are 0 *by construction* (ratio 1, equal lengths,
group-centred advantages: every aggregation gives −mean A = 0) — printed, proving nothing. The
check feeds **the same completions** (fixed token ids of unequal lengths L/2…L, drawn by the
driver) through each side's own pipeline after sampling, at the start weights (lr 0): TRL's
trainer with ``_generate_single_turn`` returning those ids (tokenisation, reward, advantages,
reference forward, ``_compute_loss`` are TRL's); mmalign's ``collect_rollout`` with its sampler
replaced the same way, then ``ppo_update``. GRPO runs it with β 0.04, so TRL computes reference
log-probs (compared token by token), and compares the loss for ``grpo`` (0 by construction),
``dapo`` and ``dr_grpo`` (non-zero with unequal lengths). RLOO's loss at ratio 1 is 0 on both
sides (trivial): its advantages are compared. Goal (issue 16): ≥ 2× TRL samples/s at ≤ 0.7× its
memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.dpo_vs_trl import memory_report, rss_kib  # noqa: E402
from benchmarks.ppo_vs_trl import Timers, _sync, build_folder, current_gib  # noqa: E402

SIZES = {
    # CPU: P=4 prompts × K=4 samples × 32 tokens, 64 image tokens, the ppo_vs_trl model shape.
    "cpu": dict(
        image=112, patch=14, v_hidden=128, v_layers=2, v_heads=4, v_inter=512,
        hidden=256, layers=4, heads=8, kv_heads=2, inter=688, vocab=8192, corpus=20000,
        prompt_words=10, response=32, batch=4, k=4, micro=8, dtype="float32",
    ),
    # --quick: a smoke run (16 image tokens, a 2-layer 64-wide Llama).
    "quick": dict(
        image=56, patch=14, v_hidden=32, v_layers=1, v_heads=2, v_inter=64,
        hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=1024, corpus=2000,
        prompt_words=6, response=8, batch=2, k=2, micro=2, dtype="float32",
    ),
}  # fmt: skip
EPSILON = 0.2
RLOO_BETA = 0.05  # TRL RLOOConfig's default β ↔ mmalign kl_coef (k1, in the reward)
CHECK_BETA = 0.04  # the check's GRPO β: TRL then computes reference log-probs to compare


# ----------------------------------------------------------------------------- the shared reward
def vowel_share(text: str) -> float:
    """Share of vowels among the letters of ``text`` (0 without letters); blind to whitespace."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def trl_reward(store: list | None = None):  # noqa: ANN201
    """TRL's reward-function convention (``completions`` are chat messages)."""

    def vowels(completions: list, **kwargs) -> list[float]:  # noqa: ANN003
        out = [vowel_share(c[0]["content"] if isinstance(c, list) else c) for c in completions]
        if store is not None:
            store.append(out)
        return out

    return vowels


def mm_reward(records: list[dict], responses: list[str]) -> list[float]:
    """mmalign's reward-function convention (:mod:`mmalign.rl.reward_fns`)."""
    return [vowel_share(r) for r in responses]


def import_model_code() -> None:
    """Import the model and processor code both sides run (transformers' Llava/CLIP/Llama, PIL,
    datasets), so the resident set taken as the base after it holds no lazily imported code:
    ``import_llava_hf`` would otherwise count ~0.25 GiB of first imports as mmalign's memory."""
    import datasets  # noqa: F401
    from PIL import Image  # noqa: F401
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration  # noqa: F401
    from transformers.models.llava import modeling_llava  # noqa: F401


def sizes(args: argparse.Namespace) -> dict:
    return {**SIZES["quick" if args.quick else "cpu"], "timed": args.timed}


def check_completions(s: dict, folder: Path, seed: int = 1) -> None:
    """P·K fixed completions of unequal lengths (L/2…L), ordinary token ids only → ``check.json``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder / "llava")
    special = set(tok.all_special_ids) | {tok.convert_tokens_to_ids("<image>")}
    ordinary = [i for i in range(len(tok)) if i not in special]
    rng = random.Random(seed)
    n, low = s["batch"] * s["k"], max(1, s["response"] // 2)
    lengths = [low + (i * 7) % (s["response"] - low + 1) for i in range(n)]
    ids = [[rng.choice(ordinary) for _ in range(length)] for length in lengths]
    (folder / "check.json").write_text(json.dumps(ids))


# ----------------------------------------------------------------------------- TRL worker
def _trl_config(s: dict, algo: str, out: Path, lr: float, steps: int, micro: int, accum: int, beta: float):
    from trl import GRPOConfig, RLOOConfig

    common = dict(
        output_dir=str(out), per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
        num_generations=s["k"], max_completion_length=s["response"], max_steps=steps, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
        optim="adamw_torch", bf16=False, fp16=False, gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(), logging_steps=1, report_to=[], save_strategy="no",
        disable_tqdm=True, seed=0, shuffle_dataset=False, temperature=1.0, top_p=1.0, top_k=0,
        epsilon=EPSILON, num_iterations=1, beta=beta, remove_unused_columns=False,
        dataloader_num_workers=0, generation_kwargs={"min_new_tokens": s["response"]},
        mask_truncated_completions=False,
    )  # fmt: skip
    if algo == "grpo":
        return GRPOConfig(**common, loss_type="dapo", scale_rewards="group")
    return RLOOConfig(**common, normalize_advantages=False)


def _trl_model(folder: Path, dtype: torch.dtype):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder / "llava", dtype=dtype)
    model.model.vision_tower.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(False)
    return model


def _trl_dataset(folder: Path, prompts: list[dict]):
    import datasets
    from PIL import Image

    rows = [{"prompt": [{"role": "user", "content": p["text"]}], "images": [Image.open(folder / p["image"])]}
            for p in prompts]  # fmt: skip
    return datasets.Dataset.from_list(rows)


def run_trl(s: dict, folder: Path, algo: str, lr: float) -> dict:
    import trl
    from transformers import AutoProcessor, TrainerCallback
    from trl import GRPOTrainer, RLOOTrainer

    import_model_code()
    base = rss_kib()
    dtype = getattr(torch, s["dtype"])
    p, k, m = s["batch"], s["k"], s["micro"]
    prompts = json.loads((folder / "prompts.json").read_text())
    processor = AutoProcessor.from_pretrained(folder / "llava")
    args = _trl_config(s, algo, folder / f"trl_{algo}", lr, 1 + s["timed"], m, p * k // m,
                       0.0 if algo == "grpo" else RLOO_BETA)  # fmt: skip
    marks, losses, rollouts, timers = [], [], [], Timers()

    class Timer(TrainerCallback):  # the rollout runs inside the step: its phases are read per step
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003, ANN201
            _sync()
            marks.append((time.perf_counter(), time.process_time()))
            rollouts.append(dict(timers.t))
            timers.t.clear()

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001, ANN003, ANN201
            if logs and "loss" in logs:
                losses.append((float(logs["loss"]), logs.get("completions/mean_length")))

    cls = GRPOTrainer if algo == "grpo" else RLOOTrainer
    model = _trl_model(folder, dtype)
    trainer = cls(
        model=model, reward_funcs=[trl_reward()], args=args, train_dataset=_trl_dataset(folder, prompts),
        processing_class=processor, callbacks=[Timer()],
    )  # fmt: skip
    trainer._generate_and_score_completions = timers.wrap("rollout", trainer._generate_and_score_completions)
    trainer._generate = timers.wrap("sample", trainer._generate)
    setup_gib = current_gib(base)
    start = (time.perf_counter(), time.process_time())
    trainer.train()
    peak = memory_report(base)
    marks.insert(0, start)
    per_iter = [
        {"start": marks[i][0], "cpu_start": marks[i][1], "end": marks[i + 1][0], "cpu_end": marks[i + 1][1],
         "rollout": rollouts[i].get("rollout", 0.0), "sample": rollouts[i].get("sample", 0.0),
         "response_tokens": losses[i][1]}
        for i in range(len(marks) - 1)
    ]  # fmt: skip
    name = f"TRL {cls.__name__} {trl.__version__}"
    out = _summary(s, per_iter[1:], peak, setup_gib, name, losses[0][0])
    del trainer, model
    out["check"] = trl_check(s, folder, algo, processor)
    return out


def trl_check(s: dict, folder: Path, algo: str, processor) -> dict:  # noqa: ANN001
    """TRL's own pipeline on the fixed completions (module docstring), from the start weights (lr 0)."""
    from trl import GRPOTrainer, RLOOTrainer

    fixed = json.loads((folder / "check.json").read_text())
    prompts = json.loads((folder / "prompts.json").read_text())[: s["batch"]]
    n = s["batch"] * s["k"]
    got: dict = {"losses": [], "rewards": []}
    beta = CHECK_BETA if algo == "grpo" else RLOO_BETA

    class Fixed(GRPOTrainer if algo == "grpo" else RLOOTrainer):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            got["prompt_ids"] = [list(map(int, x)) for x in prompt_ids]
            ids = [list(c) for c in fixed[: len(prompt_ids)]]
            return (ids, None) if algo == "grpo" else ids

        def _generate_and_score_completions(self, inputs):  # noqa: ANN001, ANN202
            got["inputs"] = super()._generate_and_score_completions(inputs)
            return got["inputs"]

        def _compute_loss(self, model, inputs):  # noqa: ANN001, ANN202
            loss = super()._compute_loss(model, inputs)
            got["losses"].append(float(loss))
            return loss

    args = _trl_config(s, algo, folder / f"trl_check_{algo}", 0.0, 1, n, 1, beta)
    trainer = Fixed(
        model=_trl_model(folder, getattr(torch, s["dtype"])), reward_funcs=[trl_reward(got["rewards"])],
        args=args, train_dataset=_trl_dataset(folder, prompts), processing_class=processor,
    )  # fmt: skip
    trainer.train()
    inputs = got["inputs"]
    mask = inputs["completion_mask"].bool()
    out = {
        "prompt_ids": got["prompt_ids"][0],
        "lengths": mask.sum(1).tolist(),
        "rewards": got["rewards"][0],
        "advantages": inputs["advantages"].float().reshape(-1).tolist(),
    }
    if algo == "grpo":
        out["ref_logps"] = [
            row[m].tolist() for row, m in zip(inputs["ref_per_token_logps"], mask, strict=True)
        ]
        out["loss"] = {"dapo": got["losses"][0]}
        with torch.no_grad():
            for agg in ("grpo", "dr_grpo"):
                trainer.loss_type = agg
                out["loss"][agg] = float(trainer._compute_loss(trainer.model, inputs))
    else:
        out["loss"] = {"grpo": got["losses"][0]}  # TRL's RLOO: a sequence-level ratio, mean over sequences
    return out


def _summary(
    s: dict, timed: list[dict], peak: float, setup: float, name: str, first_loss: float | None
) -> dict:
    """The fastest timed iteration (after the warm-up): samples/s, CPU seconds, phases."""
    it = min(timed, key=lambda t: t["end"] - t["start"])
    total = it["end"] - it["start"]
    return {
        "name": name, "samples_per_s": s["batch"] * s["k"] / total, "iteration_s": total,
        "all_iteration_s": [t["end"] - t["start"] for t in timed], "cpu_s": it["cpu_end"] - it["cpu_start"],
        "rollout_s": it["rollout"], "sample_s": it.get("sample", 0.0), "score_s": it.get("score", 0.0),
        "update_s": total - it["rollout"], "peak_gib": peak, "setup_gib": setup, "first_loss": first_loss,
        "response_tokens": it["response_tokens"],
    }  # fmt: skip


# ----------------------------------------------------------------------------- mmalign worker
def _mm_config(s: dict, algo: str, lr: float, micro_prompts: int, accum: int):
    from mmalign.rl.config import PPOConfig
    from mmalign.rl.reward_sources import RewardFunction
    from mmalign.training.parts import OptimConfig, PartsConfig
    from mmalign.training.strategy import StrategyConfig

    strategy_cfg = StrategyConfig(
        zero_stage=0, precision={"float32": "fp32", "bfloat16": "bf16"}[s["dtype"]],
        micro_batch_size=micro_prompts, grad_accum=accum, grad_clip=0.0,
    )  # fmt: skip
    common = dict(
        strategy=strategy_cfg, optim=OptimConfig(lr=lr, weight_decay=0.0, schedule="constant"),
        parts=PartsConfig(train_vision=False, train_projector=False, train_llm=True),
        rollout_batch_size=s["batch"], num_samples=s["k"], ppo_epochs=1, max_new_tokens=s["response"],
        temperature=1.0, top_p=1.0, top_k=0, generation_batch_size=s["batch"], reward_prompt=None,
        reward_model=None, reward_functions=[RewardFunction("benchmarks.rl_vs_trl:mm_reward", name="vowels")],
        clip_range=EPSILON, whiten_rewards=False, plot=False,
    )  # fmt: skip
    if algo == "grpo":
        return PPOConfig(**common, estimator="grpo", kl_mode="loss", kl_coef=0.0, kl_estimator="k3",
                         loss_aggregation="dapo", scale_rewards="group")  # fmt: skip
    return PPOConfig(**common, estimator="rloo", kl_mode="reward", kl_coef=RLOO_BETA, kl_estimator="k1",
                     kl_clamp_min=None, loss_aggregation="grpo")  # fmt: skip


def _mm_engines(strategy, cfg, folder: Path, dtype: torch.dtype, name: str = "policy"):  # noqa: ANN001, ANN202
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.models.llava_hf import import_llava_hf
    from mmalign.preference.scoring import PreferenceModel
    from mmalign.rl.actor_critic import PPOEngines
    from mmalign.training.parts import configure_parts

    policy, tok = import_llava_hf(folder / "llava", dtype=dtype)
    ref = import_llava_hf(folder / "llava", dtype=dtype)[0]
    processor = MultimodalProcessor.for_model(policy, tok)
    processor.stop_token_ids = []  # no stop token: exactly max_new_tokens (TRL: min_new_tokens)
    groups = configure_parts(policy, cfg.parts, cfg.optim)
    model = PreferenceModel(policy, "frozen", ref, media_frozen=True).to(strategy.device)
    model.temperature = cfg.temperature
    optimizer = strategy.make_optimizer(groups, cfg.optim.betas, cfg.optim.eps)
    engine = strategy.prepare(model, optimizer, None, name=name)
    return PPOEngines(strategy, engine), processor


def _rl_prompts(folder: Path, prompts: list[dict]) -> list:
    from mmalign.rl.prompts import RLPrompt

    turn = lambda p: [{"role": "user", "content": "<image>\n" + p["text"]}]  # noqa: E731
    return [RLPrompt(p["id"], turn(p), [folder / p["image"]], [], None, None, "open") for p in prompts]


def run_mmalign(s: dict, folder: Path, algo: str, lr: float) -> dict:
    import mmalign.models.llava_hf  # noqa: F401  (the model code: imported before the base, as TRL's)
    import mmalign.preference.scoring  # noqa: F401
    from mmalign.rl import rollout as rollout_mod
    from mmalign.rl.ppo import ppo_update
    from mmalign.rl.reward_sources import RewardSources
    from mmalign.training.strategy import Strategy

    p, k, m = s["batch"], s["k"], s["micro"]
    cfg = _mm_config(s, algo, lr, m // k, p * k // m)
    strategy = Strategy(cfg.strategy, seed=0)
    strategy.setup_distributed()
    import_model_code()
    base = rss_kib()
    engines, processor = _mm_engines(strategy, cfg, folder, strategy.dtype)
    sources = RewardSources(functions=[("vowels", mm_reward, 1.0)], micro_batch=cfg.strategy.micro_batch_size)
    setup_gib = current_gib(base)
    timers = Timers()
    generate, score_groups = rollout_mod.generate, rollout_mod.score_groups
    rollout_mod.generate = timers.wrap("sample", generate)
    rollout_mod.score_groups = timers.wrap("score", score_groups)
    prompts = _rl_prompts(folder, json.loads((folder / "prompts.json").read_text()))
    per_iter, first_loss = [], None
    for it in range(1 + s["timed"]):
        timers.t.clear()
        _sync()
        t0, c0 = time.perf_counter(), time.process_time()
        ro = rollout_mod.collect_rollout(engines, sources, processor, prompts[it * p : (it + 1) * p], cfg, it,
                                         cfg.kl_coef)  # fmt: skip
        _sync()
        t1 = time.perf_counter()
        upd = ppo_update(engines, ro, cfg, it, processor.pad_token_id, cfg.kl_coef)
        _sync()
        per_iter.append(
            {**timers.t, "start": t0, "cpu_start": c0, "rollout": t1 - t0, "end": time.perf_counter(),
             "cpu_end": time.process_time(), "response_tokens": float(ro.lengths.float().mean())}
        )  # fmt: skip
        first_loss = upd["loss/policy"] if first_loss is None else first_loss
    name = f"mmalign {algo} (ZeRO-0 engine)"
    out = _summary(s, per_iter[1:], memory_report(base), setup_gib, name, first_loss)
    rollout_mod.generate, rollout_mod.score_groups = generate, score_groups
    out["check"] = mm_check(s, folder, algo, strategy)
    return out


def mm_check(s: dict, folder: Path, algo: str, strategy) -> dict:  # noqa: ANN001
    """mmalign's pipeline on the fixed completions (module docstring), from the start weights (lr 0)."""
    from mmalign.rl import rollout as rollout_mod
    from mmalign.rl.ppo import ppo_update
    from mmalign.rl.reward_sources import RewardSources
    from mmalign.training.generation import Generation

    fixed = json.loads((folder / "check.json").read_text())
    prompts = _rl_prompts(folder, json.loads((folder / "prompts.json").read_text())[: s["batch"]])
    cfg = _mm_config(s, algo, 1e-5, s["batch"], 1)  # one micro-batch: the whole rollout
    if algo == "grpo":
        cfg = replace(cfg, kl_coef=CHECK_BETA)
    engines, processor = _mm_engines(strategy, cfg, folder, strategy.dtype, name="check")
    for group in engines.policy.optimizer.param_groups:  # lr 0 (the config wants > 0): start weights kept
        group["lr"] = 0.0
    tok = processor.tokenizer
    seen: dict = {}

    def fixed_generate(model, proc, feats, gen_cfg, num_samples=1, **kw):  # noqa: ANN001, ANN003, ANN202
        seen["prompt_ids"] = [list(map(int, f["input_ids"])) for f in feats]
        ids = [list(c) for c in fixed[: len(feats) * num_samples]]
        texts = [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
        return Generation(seen["prompt_ids"], ids, texts, [], [False] * len(ids), num_samples)

    generate = rollout_mod.generate
    rollout_mod.generate = fixed_generate
    try:
        sources = RewardSources(functions=[("vowels", mm_reward, 1.0)], micro_batch=s["batch"])
        ro = rollout_mod.collect_rollout(engines, sources, processor, prompts, cfg, 0, cfg.kl_coef)
    finally:
        rollout_mod.generate = generate
    mask = ro.mask.bool()
    out = {
        "prompt_ids": seen["prompt_ids"][0],
        "lengths": mask.sum(1).tolist(),
        "rewards": ro.terms["fn/vowels"].tolist(),
        "advantages": ro.advantages[:, 0].tolist(),
        "ref_logps": [row[mk].tolist() for row, mk in zip(ro.ref_logprobs, mask, strict=True)],
        "ratio_first": None,
        "loss": {},
    }
    for agg in ("grpo", "dapo", "dr_grpo") if algo == "grpo" else ("grpo",):
        upd = ppo_update(
            engines, ro, replace(cfg, loss_aggregation=agg), 0, processor.pad_token_id, cfg.kl_coef
        )
        out["loss"][agg] = upd["loss/policy"]
        out["ratio_first"] = upd["policy/ratio_first"]
    if algo == "grpo":  # dapo split into one-prompt micro-batches (TRL's normaliser makes it split-free)
        split = replace(cfg, loss_aggregation="dapo", strategy=replace(cfg.strategy, micro_batch_size=1))
        out["dapo_micro1"] = ppo_update(engines, ro, split, 0, processor.pad_token_id, cfg.kl_coef)[
            "loss/policy"
        ]
    return out


# ----------------------------------------------------------------------------- driver
def worker(args: argparse.Namespace) -> None:
    s, folder = sizes(args), Path(args.folder)
    system, algo = args.worker.split("_")
    res = run_trl(s, folder, algo, args.lr) if system == "trl" else run_mmalign(s, folder, algo, args.lr)
    print("RESULT " + json.dumps(res))


def spawn(name: str, args: argparse.Namespace, folder: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--folder", str(folder), "--lr", str(args.lr)]
    cmd += ["--timed", str(args.timed)] + (["--quick"] if args.quick else [])
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def _max_diff(a: list, b: list) -> float:
    flat = lambda x: [v for row in x for v in (row if isinstance(row, list) else [row])]  # noqa: E731
    fa, fb = flat(a), flat(b)
    return (
        max((abs(x - y) for x, y in zip(fa, fb, strict=True)), default=0.0)
        if len(fa) == len(fb)
        else float("inf")
    )


def report(s: dict, args: argparse.Namespace, results: dict, seconds: float) -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(
        f"\nCritic-free RL, one iteration (rollout + update) after a warm-up, fastest of {args.timed} timed × {args.repeats} run(s): "
        f"{s['batch']} prompts (1 image, {(s['image'] // s['patch']) ** 2} image tokens) × K={s['k']} samples, "
        f"{s['response']} response tokens, micro-batch {s['micro']} sequences, 1 epoch, {s['dtype']}, {device}"
    )
    head = f"{'system':<34}{'samples/s':>10}{'× TRL':>7}{'peak GiB':>9}{'× TRL':>7}{'setup':>7}{'CPU s':>7}"
    print(head + f"{'× TRL':>7}{'rollout':>8}{'sample s':>9}{'score s':>8}{'update s':>9}{'1st loss':>10}")
    verdicts = []
    for algo in ("grpo", "rloo"):
        trl, mm = results[f"trl_{algo}"], results[f"mm_{algo}"]
        for r in (trl, mm):
            loss = "—" if r["first_loss"] is None else f"{r['first_loss']:.2e}"
            print(
                f"{r['name']:<34}{r['samples_per_s']:>10.3f}{r['samples_per_s'] / trl['samples_per_s']:>7.2f}"
                f"{r['peak_gib']:>9.3f}{r['peak_gib'] / trl['peak_gib']:>7.2f}{r['setup_gib']:>7.3f}"
                f"{r['cpu_s']:>7.1f}{r['cpu_s'] / trl['cpu_s']:>7.2f}{r['rollout_s'] / r['iteration_s']:>7.0%} "
                f"{r['sample_s']:>9.2f}{r['score_s']:>8.2f}{r['update_s']:>9.2f}{loss:>10}"
            )
        speed, mem = mm["samples_per_s"] / trl["samples_per_s"], mm["peak_gib"] / trl["peak_gib"]
        ok = speed >= 2 and mem <= 0.7
        cpu = trl["cpu_s"] / mm["cpu_s"]
        verdicts.append(
            f"{algo.upper()} {'met' if ok else 'NOT met'} ({speed:.2f}× samples/s, {mem:.2f}× memory; "
            f"{cpu:.2f}× by CPU seconds)"
        )
    print("samples = completions (prompts × K); rollout = sampling + scoring + rewards + advantages; "
          "1st loss: the timed run's first step, 0 by construction (ratio 1, equal lengths); mean response "
          "tokens: " + ", ".join(f"{n} {r['response_tokens']:g}" for n, r in results.items()))  # fmt: skip
    print("every timed iteration (s): " + "; ".join(
        f"{n} " + " ".join(f"{t:.2f}" for t in r["all_iteration_s"]) for n, r in results.items()
    ))  # fmt: skip
    print("\nfirst-step check on the same completions (lengths "
          f"{min(results['mm_grpo']['check']['lengths'])}–{max(results['mm_grpo']['check']['lengths'])}), "
          "start weights, each side's own pipeline after sampling:")  # fmt: skip
    worst = 0.0
    for algo in ("grpo", "rloo"):
        t, m = results[f"trl_{algo}"]["check"], results[f"mm_{algo}"]["check"]
        same = t["prompt_ids"] == m["prompt_ids"] and t["lengths"] == m["lengths"]
        line = (
            f"  {algo.upper()}: same prompt ids and lengths {same}; rewards max|Δ| "
            f"{_max_diff(t['rewards'], m['rewards']):.1e}; advantages max|Δ| "
            f"{_max_diff(t['advantages'], m['advantages']):.1e}"
        )
        if "ref_logps" in t:
            line += f"; reference log-probs max|Δ| {_max_diff(t['ref_logps'], m['ref_logps']):.1e}"
        print(line + f"; mmalign's first ratio |r − 1| {m['ratio_first']:.1e}")
        for agg, tl in t["loss"].items():
            d = abs(tl - m["loss"][agg])
            worst = max(worst, d) if algo == "grpo" else worst
            trivial = algo == "rloo" or agg == "grpo"
            note = "  (−mean A over whole groups: 0 by construction)" if trivial else ""
            print(f"    loss {agg:<8} TRL {tl:+.6f}  mmalign {m['loss'][agg]:+.6f}  |Δ| {d:.1e}{note}")
    m = results["mm_grpo"]["check"]
    print(f"  mmalign's dapo in one-prompt micro-batches: {m['dapo_micro1']:+.6f} (whole batch "
          f"{m['loss']['dapo']:+.6f}); TRL's dapo divides by the tokens of the whole generation batch, so its "
          "value does not depend on the split")  # fmt: skip
    print(f"GRPO first-step losses equal to 1e-4: {'yes' if worst <= 1e-4 else 'NO'} (max |Δ| {worst:.1e})")
    print("goal (≥ 2× TRL samples/s at ≤ 0.7× its memory): " + "; ".join(verdicts)
          + f"; whole benchmark {seconds:.0f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke size (tiny model, ~1 min)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument(
        "--timed", type=int, default=1, help="timed iterations after the warm-up (fastest kept)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of the four subprocesses, interleaved; fastest kept"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    s = sizes(args)
    os.environ["HF_HUB_OFFLINE"] = "1"
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_folder(s, folder)
        check_completions(s, folder)
        for _ in range(args.repeats):  # interleaved rounds; each system's fastest kept (a shared machine)
            for name in ("trl_grpo", "mm_grpo", "trl_rloo", "mm_rloo"):
                r = spawn(name, args, folder)
                if name not in results or r["samples_per_s"] > results[name]["samples_per_s"]:
                    results[name] = r
    report(s, args, results, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
