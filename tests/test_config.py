"""Typed configs: YAML + overrides, unknown keys rejected by name, validation, round trip."""

from __future__ import annotations

import pytest

from mmalign.config import ConfigError, load_config, parse_overrides, save_config
from mmalign.shapeworld.recipe.tiny_preset import TinyPresetConfig


def test_yaml_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("llm_hidden: 64\nstage0:\n  steps: 10\n  lr: 0.01\n")
    cfg = load_config(TinyPresetConfig, tmp_path / "c.yaml", ["stage0.steps=20", "out=/x", "stage0.lr=1e-3"])
    assert cfg.llm_hidden == 64 and cfg.stage0.steps == 20 and cfg.out == "/x"
    assert cfg.stage0.lr == pytest.approx(1e-3) and isinstance(cfg.stage0.lr, float)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(TinyPresetConfig, tmp_path / "resolved.yaml") == cfg


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ConfigError, match="unknown config key\\(s\\) stage0.stepz"):
        load_config(TinyPresetConfig, None, ["stage0.stepz=3"])
    with pytest.raises(ConfigError, match="stage0.*lr must be in"):
        load_config(TinyPresetConfig, None, ["stage0.lr=5"])
    with pytest.raises(ConfigError, match="not key=value"):
        parse_overrides(["steps"])
    with pytest.raises(FileNotFoundError):
        load_config(TinyPresetConfig, "/nonexistent.yaml")


def test_literal_fields_are_checked_by_the_loader():
    from mmalign.preference.config import DPOConfig
    from mmalign.training.sft_config import SFTConfig

    with pytest.raises(
        ConfigError, match=r"reference: must be one of 'precomputed', 'frozen', 'lora', got 'lroa'"
    ):
        load_config(DPOConfig, None, ["reference=lroa"])
    with pytest.raises(ConfigError, match=r"strategy\.precision: must be one of 'fp32', 'bf16', 'fp16'"):
        load_config(SFTConfig, None, ["strategy.precision=bf32"])
    with pytest.raises(ConfigError, match=r"export_lora: .* got True"):
        load_config(SFTConfig, None, ["export_lora=true"])
    assert load_config(DPOConfig, None, ["povid.noise_source=generate"]).povid.noise_source == "generate"


def test_lora_reference_with_a_training_projector_warns():
    from mmalign.preference.config import DPOConfig

    lora = ["reference=lora", "lora.enabled=true"]
    with pytest.warns(UserWarning, match="reference drifts"):
        load_config(DPOConfig, None, [*lora, "parts.train_projector=true"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(DPOConfig, None, [*lora, "parts.train_projector=false", "parts.train_vision=false"])


def test_trainers_share_one_run_config():
    import dataclasses

    from mmalign.preference.config import DPOConfig, RewardConfig, TrainRunConfig
    from mmalign.training.run_config import RunConfig
    from mmalign.training.sft_config import SFTConfig

    shared = {f.name for f in dataclasses.fields(RunConfig)}
    assert TrainRunConfig is RunConfig  # the old import path
    for cls in (SFTConfig, DPOConfig, RewardConfig):
        assert issubclass(cls, RunConfig)
        own = {f.name for f in dataclasses.fields(cls)} - shared
        assert "data" in own and not own & {"optim", "strategy", "resume", "seed"}
    with pytest.raises(ConfigError, match="data_checks: must be one of"):
        load_config(RewardConfig, None, ["data_checks=lenient"])
