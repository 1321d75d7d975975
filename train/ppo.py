"""RL for LMMs under DeepSpeed (ZeRO-0…3): PPO with a factually augmented reward model (Fact-RLHF,
LLaVA-RLHF) and, on the same engine, the critic-free ReMax, RLOO and GRPO.

Launch:

    # GPUs: the 7B recipe (LLaVA-RLHF's settings, local paths)
    deepspeed --num_gpus 8 train/ppo.py --config configs/ppo/llava15_7b_fact_rlhf.yaml
    # CPU, 2 ranks, the tiny ShapeWorld model (prompts and reward model: see the README's Fact-RLHF study)
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 train/ppo.py --config configs/ppo/tiny_shapeworld.yaml
    # GRPO (or preset=remax / rloo) with the exact ShapeWorld judge as a verifiable reward
    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 train/ppo.py --config configs/ppo/tiny_shapeworld.yaml \
        preset=grpo num_samples=4 out=runs/grpo_judge reward_model=null \
        'reward_functions=[{spec: "mmalign.rl.reward_fns:shapeworld_judge"}]'

``estimator`` (or the presets ``remax``, ``rloo``, ``grpo``) picks PPO (value model + GAE) or a
critic-free baseline (:mod:`mmalign.rl.baselines`: no value model is held); rewards come from the
reward model and/or Python reward functions (:mod:`mmalign.rl.reward_sources`), each weighted and
logged. The rest of this docstring describes PPO.

Four roles: the **policy** (trainable, full or LoRA), the **reference** (the start policy: its
LoRA adapter disabled, or a frozen copy sharded under ZeRO-3), the **value model** (an LMM +
scalar head read at every response token; its trunk starts from the reward model, its head at
zero), the **reward model** (frozen; it may have another base, tokenizer and image size — it
reads the response as text). Each iteration: this rank's prompts (a function of seed and
iteration, so ``resume=auto`` after a kill replays them) → a rollout (:mod:`mmalign.rl.rollout`:
sample, score, reward, GAE) → ``ppo_epochs`` passes of clipped updates (:mod:`mmalign.rl.ppo`) →
the KL controller → metrics (TensorBoard, ``metrics.jsonl``, PNG curves at the end) and rank 0's
responses with their reward terms (``samples.jsonl``).

Two settings, chosen by ``preset`` (every value can still be set in the config):

* ``none`` — the corrected default: the sequence reward at the response's EOS token, padding
  masked out of GAE, the losses and whitening; token-mean losses; γ = 1, λ = 0.95.
* ``llava_rlhf`` — the authors' code: reward + 2 × correctness − 10·len/896 × length_bonus − 8
  without EOS, ×10, at the LAST column of the fixed 896-token buffer (not at EOS); per-token KL
  k1 clamped at 0 with β = 0.1; GAE with γ = λ = 1 over every position, padding included; losses
  averaged over every position; clip 0.2, value clip 0.2, vf_coef 0.1; 2 epochs; rollout 512 /
  step 256; lr 3e-5 cosine with 5 warmup steps; prompts over 128 tokens dropped.

Departures from LLaVA-RLHF's code in both settings: policy and value are separate engines with
separate AdamW optimizers (theirs: one optimizer over both adapters), so gradients are clipped
separately; responses are not cut at the first "?" (a quirk of their code); the log-probs of the
rollout come from the training-layout forward (as theirs) — the sampler's own log-probs are only
compared with them (``rollout/logprob_gap``); a shared-prefix row scores a prompt's K samples.
Two layouts: ``separate`` (default) — the value model is its own LMM (full or LoRA) in its own
engine; ``shared_lora`` — policy and value are two LoRA adapters on one frozen base in one engine
and one optimizer (:class:`mmalign.rl.actor_critic.SharedActorCritic`; the reference is the base).
"""

from __future__ import annotations

import faulthandler
from dataclasses import replace
from pathlib import Path

from mmalign.cli import parse_run_args
from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.plots import plot_metrics
from mmalign.models.checkpoint import load_model
from mmalign.models.heads import ScalarHead, ScalarModel
from mmalign.preference.reward_model import load_reward_model
from mmalign.preference.scoring import PreferenceModel
from mmalign.rl.actor_critic import PPOEngines, SharedActorCritic, is_value_adapter
from mmalign.rl.advantages import make_kl_controller
from mmalign.rl.config import PPOConfig
from mmalign.rl.ppo import ppo_update
from mmalign.rl.prompts import check_facts, load_prompts
from mmalign.rl.reward_fns import load_reward_fn
from mmalign.rl.reward_sources import RewardSources
from mmalign.rl.rollout import collect_rollout
from mmalign.training.parts import apply_lora, configure_parts
from mmalign.training.run import TrainingRun, exit_after_run

CURVES = (
    "reward/total", "reward/rm", "reward/correctness", "kl/sequence", "kl/coef", "response/length",
    "policy/entropy", "policy/clip_fraction", "value/explained_variance",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a native abort on a rank prints every thread's Python stack
    args, cfg = parse_run_args(PPOConfig, "mmalign PPO (Fact-RLHF)", argv, dry_run=False)
    shared = cfg.layout == "shared_lora"  # (for PPO; the critic-free estimators hold no value model)

    # 1. Processes; the policy (+ a frozen reference copy when not LoRA).
    run = TrainingRun(cfg, "ppo")
    dev, dtype, world = run.device, run.dtype, run.strategy.world_size
    policy, tokenizer = load_model(cfg.model, dtype=dtype, template=cfg.template)
    reference = cfg.reference_mode
    ref_model = load_model(cfg.model, dtype=dtype)[0] if reference == "frozen" else None
    if cfg.lora.enabled:
        apply_lora(policy, cfg.lora)
    processor = MultimodalProcessor.for_model(policy, tokenizer)

    # 2. Reward sources: the reward model (frozen, its own processor) and reward functions. Value
    # model (PPO only): its own LMM whose trunk starts from the reward model, or a second adapter
    # on the policy's base (shared_lora).
    reward_model = rm_processor = None
    if cfg.reward_model is not None:
        reward_model, rm_tokenizer = load_reward_model(cfg.reward_model, dtype=dtype)
        rm_processor = MultimodalProcessor.for_model(reward_model.lmm, rm_tokenizer)
    functions = [(f.name, load_reward_fn(f.spec), f.weight) for f in cfg.reward_functions]
    head = None
    if cfg.value_head == "reward" and reward_model is not None:
        head = ScalarHead.from_state_dict(reward_model.head.state_dict())
    value_lr = cfg.optim.lr if cfg.value_lr is None else cfg.value_lr
    value_model = actor_critic = None
    if shared and cfg.critic:
        actor_critic = SharedActorCritic(policy, head, cfg.value_model).to(dev)
        policy_groups = configure_parts(policy, cfg.parts, cfg.optim)  # both adapters train
        value_params = {id(p) for n, p in policy.named_parameters() if is_value_adapter(n)}
        for group in list(policy_groups):  # the value adapter trains at value_lr, in groups of its own
            mine = [p for p in group["params"] if id(p) in value_params]
            if mine:
                group["params"] = [p for p in group["params"] if id(p) not in value_params]
                policy_groups.append({**group, "params": mine, "lr": value_lr, "name": "value_adapter"})
        policy_groups = [g for g in policy_groups if g["params"]]
        policy_groups.append(
            {"params": list(actor_critic.head.parameters()), "lr": value_lr, "weight_decay": 0.0}
        )
    else:
        policy_groups = configure_parts(policy, cfg.parts, cfg.optim)
        media_frozen = not (cfg.parts.train_vision or cfg.parts.train_projector)
        policy_model = PreferenceModel(policy, reference, ref_model, media_frozen=media_frozen).to(dev)
    if cfg.critic and not shared:
        trunk = cfg.value_model or cfg.reward_model or cfg.model
        value_lmm, value_tokenizer = load_model(trunk, dtype=dtype)
        if value_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise SystemExit(
                f"error: the value model {trunk} has another tokenizer than the policy {cfg.model}; it "
                "scores the policy's tokens — set value_model to a checkpoint of the policy's family "
                "(or use layout: shared_lora)"
            )
        if cfg.lora.enabled:
            apply_lora(value_lmm, cfg.lora)
        value_groups = configure_parts(value_lmm, cfg.parts, replace(cfg.optim, lr=value_lr))
        value_model = ScalarModel(value_lmm, head, read="tokens").to(dev)
        value_groups.append(
            {"params": list(value_model.head.parameters()), "lr": value_lr, "weight_decay": 0.0}
        )

    # 3. Prompts with their facts; prompts over the length limit skipped and counted.
    template = Path(cfg.reward_prompt).read_text().strip() if cfg.reward_prompt and cfg.reward_model else None
    prompts = load_prompts(cfg.prompts, cfg.captions, cfg.media_root)
    prompts, missing = check_facts(
        prompts, bool(template and "{captions}" in template), bool(template and "{answer}" in template),
        cfg.missing_facts,
    )  # fmt: skip
    too_long = {
        p.id for p in prompts
        if len(processor.tokenize_prompt(p.prompt, len(p.images), len(p.videos), p.id)) > cfg.max_prompt_length
    }  # fmt: skip
    prompts = [p for p in prompts if p.id not in too_long]
    if not prompts:
        raise SystemExit(
            f"error: no prompt of {cfg.prompts} is left: {len(missing)} lack a fact the reward prompt "
            f"needs, {len(too_long)} are over max_prompt_length {cfg.max_prompt_length}"
        )
    if cfg.rollout_batch_size % world:
        raise SystemExit(
            f"error: rollout_batch_size {cfg.rollout_batch_size} must be a multiple of world {world}"
        )
    run.plan(len(prompts), per_rank=cfg.rollout_batch_size // world, steps=cfg.iterations)
    updates = cfg.updates_per_iteration(world)

    (actor_critic or policy_model).temperature = cfg.temperature  # samples scored as sampled

    # 4. Engines: the policy's first (the checkpoint's main engine), the value's, the frozen reward model.
    optimizer, scheduler = run.optimizer(policy_groups, run.total_steps * updates)
    if actor_critic is not None:
        engine = run.strategy.prepare(
            actor_critic,
            optimizer,
            scheduler,
            checkpointing=[policy.llm],
            blank_media=[policy],
            name="policy",
        )
        engines = PPOEngines(run.strategy, engine, shared=True)
    else:
        policy_engine = run.strategy.prepare(
            policy_model, optimizer, scheduler, checkpointing=[policy.llm],
            blank_media=[policy] + ([ref_model] if ref_model is not None else []), name="policy",
        )  # fmt: skip
        value_engine = None
        if value_model is not None:
            optimizer, scheduler = run.optimizer(value_groups, run.total_steps * updates)
            value_engine = run.strategy.prepare(
                value_model, optimizer, scheduler, checkpointing=[value_lmm.llm], blank_media=[value_lmm],
                name="value",
            )  # fmt: skip
        engines = PPOEngines(run.strategy, policy_engine, value_engine)
    rm_engine = None
    if reward_model is not None:
        rm_engine = run.strategy.prepare_frozen(
            reward_model, blank_media=[reward_model.lmm], name="reward", offload=cfg.offload_frozen
        )
    rewards = RewardSources(
        rm_engine, rm_processor, template, cfg.rm_weight, functions, cfg.reward_fn_errors,
        cfg.strategy.micro_batch_size,
    )  # fmt: skip
    kl_ctl = make_kl_controller(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    notes = [
        f"{len(prompts)} prompts ({len(missing)} skipped without facts, {len(too_long)} over "
        f"{cfg.max_prompt_length} tokens); estimator {cfg.estimator}; layout {cfg.layout}; reference {reference}; preset "
        f"{cfg.preset}; {updates} optimizer steps per iteration"
    ]
    if run.begin(notes) is None:
        return 2
    if "kl" in run.state:
        kl_ctl.load_state_dict(run.state["kl"])

    # 5. The loop: rollout → PPO epochs → KL controller; rank 0's samples to samples.jsonl.
    def iteration(it: int, indices: list[int]) -> dict[str, float]:
        rollout = collect_rollout(
            engines, rewards, processor, [prompts[i] for i in indices], cfg, it, kl_ctl.value
        )
        update = ppo_update(engines, rollout, cfg, it, processor.pad_token_id, kl_ctl.value)
        stats = {**rollout.stats, **update}
        record = {k: run.strategy.all_reduce_mean(v) for k, v in stats.items()}
        record["rollout/generated_tokens"] *= world  # a sum over ranks, not a mean
        # a metric undefined this iteration (explained variance of constant returns) is left out
        record = {k: v for k, v in record.items() if v == v}
        kl_ctl.update(record["kl/sequence"], cfg.rollout_batch_size * cfg.num_samples)
        run.state["kl"] = kl_ctl.state_dict()
        record["lr"] = run.strategy.current_lrs(engines.policy)[0]
        run.log.log_samples(it + 1, rollout.samples(cfg.log_samples))
        return record

    run.iterate(iteration)

    # 6. Final checkpoint, the policy's export (never the value adapter), curves.
    written = run.finish(policy, exclude=is_value_adapter if actor_critic is not None else None)
    if cfg.plot and run.strategy.is_main:
        written["curves"] = str(plot_metrics(run.out, list(CURVES), run.out / "curves.png"))
    run.close(written)
    return 0


if __name__ == "__main__":
    exit_after_run(main())  # no interpreter finalization: see its docstring
