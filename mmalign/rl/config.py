"""The RL run config (:class:`PPOConfig`: PPO and the critic-free ReMax / RLOO / GRPO) and its presets.

Sizes are counted in **prompts** (each answered ``num_samples`` times): ``rollout_batch_size``
prompts are sampled per iteration over all ranks; an optimizer step takes
``strategy.micro_batch_size × strategy.grad_accum × world`` of them (LLaVA-RLHF's "step batch");
``ppo_epochs`` passes over the rollout. So one iteration makes
``ppo_epochs × rollout_batch_size / step_batch`` optimizer steps of the policy and of the value
model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from mmalign.rl.reward_sources import RewardFunction
from mmalign.rl.rewards import ShapingConfig
from mmalign.training.run_config import RunConfig


@dataclass
class PPOConfig(RunConfig):
    """PPO with a (factually augmented) reward model, as LLaVA-RLHF (https://arxiv.org/abs/2309.14525),
    and the critic-free estimators on the same engine.

    Attributes:
        preset: ``none`` (the corrected default), ``llava_rlhf`` (the authors' code: every setting
            below that their code fixes), ``remax``, ``rloo`` or ``grpo`` (each estimator's usual
            settings); values in the config file still win.
        estimator: ``ppo`` (value model + GAE), ``remax`` (one sample and one greedy response per
            prompt, advantage r(sample) − r(greedy); https://arxiv.org/abs/2310.10505), ``rloo`` (K
            samples, leave-one-out baseline) or ``grpo`` (K samples, group-normalised); the
            critic-free ones hold no value model.
        scale_rewards: GRPO's normalisation: ``group`` std, ``batch`` std (all ranks) or ``none``.
        kl_mode: the KL to the reference as a per-token penalty in the ``reward`` (PPO, ReMax's
            code) or as a ``loss`` term β·KL (GRPO).
        prompts: prompt file (LLaVA-RLHF's PPO prompts, our LLaVA records with ``captions`` /
            ``answer``, ShapeWorld prompts): :func:`mmalign.rl.prompts.load_prompts`.
        captions: LLaVA-RLHF's ``image_to_caption.json`` (file name → captions), if the records
            carry none.
        media_root: folder of relative media paths (default: the prompt file's folder).
        missing_facts: a prompt lacking captions (or an answer) that the reward prompt needs:
            ``error`` names its ``file:line``; ``skip`` drops and counts it.
        max_prompt_length: prompts with more tokens (media tokens included) are skipped and counted,
            never truncated (LLaVA-RLHF: 128 text tokens).
        reward_model: an mmalign reward-model folder (``reward_head.safetensors``); may have another
            base, tokenizer and image size than the policy (it reads the response as text);
            ``None``: no reward model (reward functions only).
        rm_weight: the reward model's weight in the score.
        reward_functions: Python rewards ``[{spec: module:function, weight, name}]``
            (:mod:`mmalign.rl.reward_fns`; ``mmalign.rl.reward_fns:shapeworld_judge`` is the exact
            ShapeWorld judge), added to the score with their weights.
        reward_fn_errors: a reward function that raises or returns NaN: ``error`` names the record;
            ``skip`` leaves that response out of the loss and counts it.
        reward_prompt: template appended after the response for the reward model
            (``configs/prompts/``; ``{captions}`` / ``{answer}`` filled from the prompt's facts,
            captions shuffled on every rollout). ``None``: the reward is read at the response's end.
        layout: ``separate`` — the value model is its own LMM (full or LoRA) in its own engine;
            ``shared_lora`` — policy and value are two LoRA adapters on one frozen base in one
            engine (LLaVA-RLHF's layout; needs ``lora.enabled``; the reference is the base).
        value_model: ``separate``: the value model's trunk (default: the reward model, as
            LLaVA-RLHF); it must share the policy's tokenizer (it scores the policy's tokens).
            ``shared_lora``: a peft adapter folder to start the value adapter from (e.g. a LoRA
            reward model's ``final_adapter``); default: a new adapter.
        value_head: ``zero`` (a new zero-initialised head, LLaVA-RLHF) or ``reward`` (start from
            the reward model's head).
        reference: ``frozen`` (a frozen copy of the start policy, sharded under ZeRO-3) or ``lora``
            (the policy with its adapter disabled; needs ``lora.enabled``); ``auto`` picks ``lora``
            for LoRA runs, else ``frozen``.
        offload_frozen: keep the frozen reference and reward model's parameters on CPU (ZeRO-3).
        iterations: rollout + update cycles (0: ``epochs`` passes over the prompts).
        rollout_batch_size: prompts per iteration, all ranks (LLaVA-RLHF: 512).
        num_samples: responses per prompt (PPO: 1).
        ppo_epochs: passes over each rollout (LLaVA-RLHF: 2).
        max_new_tokens / temperature / top_p / top_k: rollout sampling (LLaVA-RLHF: 896, 1.0, 1.0, 0);
            policy and reference score the samples at ``softmax(logits / temperature)`` (the ratio and
            the KL refer to the distribution sampled; top-p / top-k filter the sampling only, as in
            TRL).
        gather_for_generation: under ZeRO-3, gather the policy once per rollout and decode without
            per-token all-gathers (the policy must fit on one device); otherwise ``synced_gpus``.
        generation_batch_size: prompts per decoding batch.
        shaping: reward terms (:class:`~mmalign.rl.rewards.ShapingConfig`).
        kl_coef: KL penalty coefficient β (LLaVA-RLHF: 0.1); kl_target: adaptive controller target
            (``None``: fixed β); kl_horizon: its horizon (Ziegler et al.).
        kl_estimator: per-token KL penalty ``k1`` (log-ratio), ``k3``, ``abs`` or ``mse``.
        kl_clamp_min: clamp each token's penalty below (LLaVA-RLHF: 0 on k1); ``None``: no clamp.
        reward_position: where the sequence reward goes: ``eos`` (the response's last token) or
            ``last`` (the last column of the fixed ``max_new_tokens`` buffer, LLaVA-RLHF's code).
        mask_padding: leave padding after EOS out of GAE, losses and whitening (the authors' code
            does not: ``false`` scores the padded buffer, pad tokens included).
        whiten_rewards: whiten the sequence rewards over the rollout (all ranks; the mean kept, as
            AlpacaFarm / LLaVA-RLHF), instead of scaling the KL penalty by ``shaping.reward_scale``.
        gamma / lam: GAE discount and λ (LLaVA-RLHF: 1, 1).
        clip_range / value_clip_range: PPO ratio clip and value clip (0.2, 0.2); ``clip_range:
            null`` is plain REINFORCE with the ratio (no clip).
        vf_coef: value-loss weight (LLaVA-RLHF: 0.1); the value engine's gradient is scaled by it.
        loss_aggregation: ``token_mean`` (masked mean over each micro-batch's tokens), ``dapo``
            (over the tokens of the whole optimizer step, all micro-batches and ranks, as TRL;
            PPO's value loss stays a per-micro-batch token mean),
            ``sequence_mean`` / ``grpo`` (per sequence, then over sequences), ``dr_grpo`` (sum over
            tokens / (sequences · max_new_tokens)),
            or ``all_positions`` (every position of the padded buffer, LLaVA-RLHF's code).
        value_lr: the value model's learning rate (default: ``optim.lr``).
        plot: write PNG curves of the main metrics into ``out`` at the end.
        log_samples: responses of rank 0 written to ``samples.jsonl`` per iteration, with their
            reward terms (0 = none).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "none": {},
        "llava_rlhf": {
            "max_prompt_length": 128,
            "rollout_batch_size": 512,
            "num_samples": 1,
            "ppo_epochs": 2,
            "max_new_tokens": 896,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "shaping": {
                "correctness_coef": 2.0,
                "length_coef": 10.0,
                "length_max": 896,
                "no_eos_penalty": 8.0,
                "reward_scale": 10.0,
            },
            "kl_coef": 0.1,
            "kl_estimator": "k1",
            "kl_clamp_min": 0.0,
            "reward_position": "last",
            "mask_padding": False,
            "whiten_rewards": False,
            "gamma": 1.0,
            "lam": 1.0,
            "clip_range": 0.2,
            "value_clip_range": 0.2,
            "vf_coef": 0.1,
            "loss_aggregation": "all_positions",
            "optim": {"lr": 3.0e-5, "warmup_steps": 5, "schedule": "cosine"},
            "strategy": {"grad_clip": 1.0},
        },
        "remax": {"estimator": "remax", "num_samples": 1, "ppo_epochs": 1, "kl_mode": "reward"},
        "rloo": {"estimator": "rloo", "num_samples": 4, "ppo_epochs": 1, "kl_mode": "reward"},
        "grpo": {
            "estimator": "grpo",
            "num_samples": 8,
            "ppo_epochs": 1,
            "kl_mode": "loss",
            "kl_coef": 0.0,
            "kl_estimator": "k3",
            "loss_aggregation": "grpo",
            "scale_rewards": "group",
        },
    }

    preset: Literal["none", "llava_rlhf", "remax", "rloo", "grpo"] = "none"
    estimator: Literal["ppo", "remax", "rloo", "grpo"] = "ppo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    kl_mode: Literal["reward", "loss"] = "reward"
    model: str = "checkpoints/tiny-shapeworld"
    out: str = "runs/ppo"
    prompts: str = "runs/rlhf_world/ppo_prompts/train.jsonl"
    captions: str | None = None
    media_root: str | None = None
    missing_facts: Literal["error", "skip"] = "error"
    max_prompt_length: int = 1024
    reward_model: str | None = "runs/rlhf_rm_fact/final"
    rm_weight: float = 1.0
    reward_functions: list[RewardFunction] = field(default_factory=list)
    reward_fn_errors: Literal["error", "skip"] = "error"
    reward_prompt: str | None = "configs/prompts/fact_rlhf_reward.txt"
    layout: Literal["separate", "shared_lora"] = "separate"
    value_model: str | None = None
    value_head: Literal["zero", "reward"] = "zero"
    reference: Literal["auto", "frozen", "lora"] = "auto"
    offload_frozen: bool = False
    iterations: int = 0
    rollout_batch_size: int = 64
    num_samples: int = 1
    ppo_epochs: int = 2
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    gather_for_generation: bool = True
    generation_batch_size: int = 32
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    kl_coef: float = 0.05
    kl_target: float | None = None
    kl_horizon: int = 10000
    kl_estimator: Literal["k1", "k3", "abs", "mse"] = "k1"
    kl_clamp_min: float | None = None
    reward_position: Literal["eos", "last"] = "eos"
    mask_padding: bool = True
    whiten_rewards: bool = False
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float | None = 0.2
    value_clip_range: float | None = 0.2
    vf_coef: float = 0.1
    loss_aggregation: Literal["token_mean", "sequence_mean", "all_positions", "grpo", "dapo", "dr_grpo"] = (
        "token_mean"
    )
    value_lr: float | None = None
    plot: bool = True
    log_samples: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 0 or self.rollout_batch_size < 1 or self.num_samples < 1 or self.ppo_epochs < 1:
            raise ValueError("iterations ≥ 0, rollout_batch_size ≥ 1, num_samples ≥ 1 and ppo_epochs ≥ 1")
        if self.max_new_tokens < 1 or self.max_prompt_length < 1:
            raise ValueError("max_new_tokens and max_prompt_length must be ≥ 1")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError("gamma and lam must be in [0, 1]")
        if (self.clip_range is not None and self.clip_range <= 0) or self.vf_coef < 0 or self.kl_coef < 0:
            raise ValueError("clip_range > 0 (or null), vf_coef ≥ 0 and kl_coef ≥ 0")
        if self.reward_model is None and not self.reward_functions:
            raise ValueError("no reward: set reward_model and/or reward_functions")
        if self.estimator == "remax" and self.num_samples != 1:
            raise ValueError(
                "remax samples one response per prompt (and decodes one greedily): num_samples 1"
            )
        if self.estimator in ("rloo", "grpo") and self.num_samples < 2:
            raise ValueError(f"{self.estimator} needs num_samples ≥ 2 (a group per prompt)")
        if self.estimator == "ppo" and self.kl_mode == "loss":
            raise ValueError("PPO puts the KL in the reward (kl_mode: reward)")
        if self.estimator == "ppo" and self.loss_aggregation == "dr_grpo":
            raise ValueError("loss_aggregation dr_grpo is for the critic-free estimators")
        if self.estimator == "remax" and self.whiten_rewards:
            raise ValueError(
                "remax compares the sample's reward with the greedy one's: whiten_rewards must be off"
            )
        if self.value_clip_range is not None and self.value_clip_range <= 0:
            raise ValueError("value_clip_range must be > 0 (or null)")
        if self.kl_mode == "loss" and self.kl_clamp_min is not None:
            raise ValueError("kl_clamp_min clamps the per-token KL penalty in the reward, not the KL loss")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (RL samples)")
        if self.lora.enabled and self.lora.dropout != 0.0:
            raise ValueError(
                "lora.dropout must be 0 for RL: the rollout scores without dropout and the update with it, "
                "so the ratio would not start at 1 (LLaVA-RLHF's PPO adapters use no dropout)"
            )
        if self.layout == "shared_lora" and self.strategy.gradient_checkpointing:
            raise ValueError(
                "layout shared_lora with gradient checkpointing would recompute the value adapter's "
                "activations with the policy adapter active (wrong value gradients): use layout separate"
            )
        if self.max_steps:
            raise ValueError("RL runs count iterations (rollout + updates): set iterations, not max_steps")
        if self.layout == "shared_lora" and (not self.lora.enabled or self.reference == "frozen"):
            raise ValueError(
                "layout: shared_lora needs lora.enabled and the LoRA reference (reference auto or lora)"
            )
        if self.reference == "lora" and not self.lora.enabled:
            raise ValueError("reference: lora needs lora.enabled (the reference is the adapter disabled)")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ValueError("kl_target must be > 0 (or null for a fixed coefficient)")
        if (self.reward_position == "last") == self.mask_padding:
            raise ValueError(
                "reward_position: last (the fixed buffer's last column) goes with mask_padding: false "
                "(the padded buffer is scored), and eos with mask_padding: true"
            )

    @property
    def critic(self) -> bool:
        """A value model is trained (PPO)."""
        return self.estimator == "ppo"

    @property
    def reference_mode(self) -> str:
        """``lora`` or ``frozen`` (``auto`` resolved)."""
        if self.reference == "auto":
            return "lora" if self.lora.enabled else "frozen"
        return self.reference

    def step_batch(self, world_size: int) -> int:
        """Prompts per optimizer step over all ranks."""
        return self.strategy.micro_batch_size * self.strategy.grad_accum * world_size

    def updates_per_iteration(self, world_size: int) -> int:
        """Optimizer steps per iteration.

        Raises:
            ValueError: ``rollout_batch_size`` is not a multiple of the step batch.
        """
        step = self.step_batch(world_size)
        if self.rollout_batch_size % step:
            raise ValueError(
                f"rollout_batch_size {self.rollout_batch_size} is not a multiple of the step batch "
                f"{step} (micro_batch_size {self.strategy.micro_batch_size} × grad_accum "
                f"{self.strategy.grad_accum} × world {world_size})"
            )
        return self.ppo_epochs * self.rollout_batch_size // step
