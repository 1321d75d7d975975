"""PPOConfig: the llava_rlhf preset under the user's values, validation, iteration arithmetic."""

from __future__ import annotations

import pytest

from mmalign.config import ConfigError, load_config
from mmalign.rl.config import PPOConfig


def test_preset_fills_what_the_user_left_unset():
    cfg = load_config(PPOConfig, None, ["preset=llava_rlhf", "kl_coef=0.2", "shaping.reward_scale=5"])
    assert cfg.kl_coef == 0.2 and cfg.shaping.reward_scale == 5.0  # the user's values win
    assert cfg.shaping.correctness_coef == 2.0 and cfg.shaping.no_eos_penalty == 8.0  # the preset's
    assert (cfg.reward_position, cfg.mask_padding, cfg.gamma, cfg.lam) == ("last", False, 1.0, 1.0)
    assert (cfg.rollout_batch_size, cfg.max_new_tokens, cfg.loss_aggregation) == (512, 896, "all_positions")
    assert cfg.optim.lr == 3.0e-5 and cfg.optim.warmup_steps == 5
    plain = load_config(PPOConfig, None, [])
    assert (plain.reward_position, plain.mask_padding, plain.lam) == ("eos", True, 0.95)


def test_invalid_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown 'ppo2'"):
        load_config(PPOConfig, None, ["preset=ppo2"])
    for bad, message in (
        (["reward_position=last"], "mask_padding"),
        (["reference=lora"], "lora.enabled"),
        (["layout=shared_lora"], "lora.enabled"),
        (["layout=shared_lora", "lora.enabled=true", "lora.dropout=0", "reference=frozen"], "LoRA reference"),
        (["kl_target=0"], "kl_target"),
        (["num_samples=0"], "num_samples"),
        (["reward_model=null"], "no reward"),
        (["preset=remax", "num_samples=2"], "num_samples 1"),
        (["preset=rloo", "num_samples=1"], "num_samples ≥ 2"),
        (["kl_mode=loss"], "PPO puts the KL in the reward"),
        (["lora.enabled=true"], "lora.dropout must be 0"),
        (["temperature=0"], "temperature must be > 0"),
        (["max_steps=5"], "set iterations"),
        (["preset=remax", "whiten_rewards=true"], "whiten_rewards"),
        (["loss_aggregation=dr_grpo"], "critic-free"),
        (["preset=grpo", "kl_clamp_min=0"], "kl_clamp_min"),
        (
            [
                "layout=shared_lora",
                "lora.enabled=true",
                "lora.dropout=0",
                "strategy.gradient_checkpointing=true",
            ],
            "layout separate",
        ),
    ):
        with pytest.raises((ConfigError, ValueError), match=message):
            load_config(PPOConfig, None, bad)


def test_optimizer_steps_per_iteration():
    cfg = load_config(
        PPOConfig, None, ["rollout_batch_size=64", "ppo_epochs=2", "strategy.micro_batch_size=8"]
    )
    assert cfg.step_batch(2) == 16 and cfg.updates_per_iteration(2) == 8
    with pytest.raises(ValueError, match="not a multiple of the step batch 48"):
        cfg.updates_per_iteration(6)
    assert load_config(PPOConfig, None, ["lora.enabled=true", "lora.dropout=0"]).reference_mode == "lora"
    assert load_config(PPOConfig, None, []).reference_mode == "frozen"


def test_critic_free_presets():
    grpo = load_config(PPOConfig, None, ["preset=grpo"])
    assert (grpo.estimator, grpo.num_samples, grpo.kl_mode, grpo.kl_coef, grpo.loss_aggregation) == (
        "grpo", 8, "loss", 0.0, "grpo",
    ) and not grpo.critic  # fmt: skip
    remax = load_config(
        PPOConfig, None, ["preset=remax", "reward_model=null", "reward_functions=[{spec: a.b:c}]"]
    )
    assert remax.estimator == "remax" and remax.reward_functions[0].name == "c" and remax.reward_model is None
    assert load_config(PPOConfig, None, []).critic
