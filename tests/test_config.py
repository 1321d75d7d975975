"""Typed configs: YAML + overrides, unknown keys rejected by name, validation, round trip."""

from __future__ import annotations

import pytest

from mmalign.config import ConfigError, load_config, parse_overrides, save_config
from mmalign.training.tiny_preset import TinyPresetConfig


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
