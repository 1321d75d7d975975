"""The efficacy study (issue 18): the "beats the control" rule, config refusals, and the study end
to end at smoke size (slow: two 2-rank DeepSpeed-free rows — the SFT model and a real 2-step
control continuation under DeepSpeed — measured on a tiny held-out split)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mmalign.config import ConfigError
from mmalign.eval.study.config import MethodEntry, apply_quick, load_study, study_from_dict
from mmalign.eval.study.methods import Context, plan
from mmalign.eval.study.report import aggregate, beats_control, format_report, mean_std, targets

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "configs" / "study" / "shapeworld.yaml"


def test_beats_control_lower_is_better():
    # better by 0.20, more than both stds (0.02, 0.05)
    assert beats_control((0.10, 0.02), (0.30, 0.05), lower_is_better=True)
    # better by 0.05 but the control's std is 0.06: not a win
    assert not beats_control((0.25, 0.02), (0.30, 0.06), lower_is_better=True)
    # better by 0.05 but the method's own std is 0.07: not a win
    assert not beats_control((0.25, 0.07), (0.30, 0.01), lower_is_better=True)
    # worse is never a win
    assert not beats_control((0.40, 0.0), (0.30, 0.0), lower_is_better=True)
    # exactly one std better is not "more than"
    assert not beats_control((0.20, 0.10), (0.30, 0.0), lower_is_better=True)


def test_beats_control_higher_is_better_and_nan():
    assert beats_control((0.95, 0.01), (0.90, 0.02), lower_is_better=False)
    assert not beats_control((0.90, 0.01), (0.95, 0.02), lower_is_better=False)
    # the same numbers read as a hallucination rate: the lower control wins, not the method
    assert not beats_control((0.95, 0.01), (0.90, 0.02), lower_is_better=True)
    assert not beats_control((float("nan"), 0.0), (0.9, 0.0), lower_is_better=False)


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.5]) == (0.5, 0.0)
    assert math.isnan(mean_std([])[0])


def _study(methods: list[dict]) -> dict:
    return {"seeds": [0], "methods": methods}


CONTROL = {"name": "control", "method": "control", "steps": 60, "batch": 32}


def test_config_refuses_unknown_method():
    with pytest.raises(ConfigError, match=r"'magic'.*unknown method 'dpo_plus_plus'"):
        study_from_dict(
            _study([CONTROL, {"name": "magic", "method": "dpo_plus_plus", "steps": 60, "control": "control"}])
        )


def test_config_refuses_budget_mismatch():
    entry = {"name": "povid-long", "method": "povid", "steps": 90, "batch": 32, "control": "control"}
    with pytest.raises(
        ConfigError, match=r"'povid-long'.*budget mismatch.*'control'.*90 steps × 32 examples vs 60 × 32"
    ):
        study_from_dict(_study([CONTROL, entry]))
    entry = {"name": "lrv-wide", "method": "lrv", "steps": 60, "batch": 64, "control": "control"}
    with pytest.raises(ConfigError, match=r"'lrv-wide'.*budget mismatch"):
        study_from_dict(_study([CONTROL, entry]))
    # an override cannot change the budget behind the check, nor an option leave its range
    sneaky = {
        "name": "povid",
        "method": "povid",
        "steps": 60,
        "control": "control",
        "overrides": ["max_steps=600"],
    }
    with pytest.raises(ConfigError, match=r"'povid'.*override 'max_steps=600'"):
        study_from_dict(_study([CONTROL, sneaky]))
    wide = {"name": "lrv", "method": "lrv", "steps": 60, "control": "control", "options": {"share": 1.5}}
    with pytest.raises(ConfigError, match=r"'lrv'.*options.share must be in \[0.0, 1.0\]"):
        study_from_dict(_study([CONTROL, wide]))


def test_config_refuses_missing_or_wrong_control():
    with pytest.raises(ConfigError, match=r"'dpo'.*needs `control:`"):
        study_from_dict(_study([CONTROL, {"name": "dpo", "method": "dpo", "steps": 60}]))
    with pytest.raises(ConfigError, match=r"'lrv'.*control 'dpo' is a 'dpo' entry"):
        study_from_dict(
            _study(
                [
                    CONTROL,
                    {"name": "dpo", "method": "dpo", "steps": 60, "control": "control"},
                    {"name": "lrv", "method": "lrv", "steps": 60, "control": "dpo"},
                ]
            )
        )
    with pytest.raises(ConfigError, match=r"'dpo'.*does not run in \['noisy'\]"):
        study_from_dict(
            _study(
                [
                    {**CONTROL, "regimes": ["clean"]},
                    {"name": "dpo", "method": "dpo", "steps": 60, "control": "control"},
                ]
            )
        )


def test_shipped_config_plans_every_row(tmp_path):
    """The shipped study and its quick version load, keep budgets matched, and plan every command
    (RL iterations resolved from the PPO config) without running anything."""
    for quick in (False, True):
        cfg = load_study(SHIPPED_CONFIG, quick=quick)
        if not quick:
            assert len(cfg.seeds) >= 3
        ctx = Context(ROOT / cfg.model, tmp_path / "train", tmp_path / "work", tmp_path / "runs", cfg.ranks)
        for entry in cfg.methods:
            for regime in entry.regimes:
                p = plan(ctx, entry, regime, 0)
                assert p.final is not None
                trains = [c for c in p.commands if c.run is not None]
                assert bool(trains) == (entry.method != "sft")
                for c in trains:  # a matched control's config is written after its i-SRT run
                    config = ROOT / c.argv[2]
                    assert (ROOT / c.argv[0]).exists() and (config.exists() or entry.matched)
    quick = apply_quick(load_study(SHIPPED_CONFIG))
    assert {"sft", "control", "dpo", "povid"} <= {m.name for m in quick.methods}
    # the quickstart's rows: control in both regimes (noisy; clean = the oracle), DPO clean, POVID noisy
    regimes = {m.name: m.regimes for m in quick.methods if m.seeded}
    assert regimes == {"control": ["noisy", "clean"], "dpo": ["clean"], "povid": ["noisy"]}
    assert quick.wordings[0] == "natural" and set(quick.wordings) == {"natural", "terse"}


def test_config_wordings_and_quick_regimes_refused():
    with pytest.raises(ConfigError, match="wordings"):
        study_from_dict({**_study([CONTROL]), "wordings": ["natural", "shouting"]})
    with pytest.raises(ConfigError, match="wording"):  # the old single-choice knob is gone
        study_from_dict({**_study([CONTROL]), "wording": "terse"})
    dpo = {"name": "dpo", "method": "dpo", "steps": 60, "control": "control"}
    cfg = study_from_dict({**_study([CONTROL, dpo]), "quick": {"regimes": {"control": ["noisy"]}}})
    with pytest.raises(ConfigError, match=r"quick: .*'dpo'.*does not run in \['clean'\]"):
        apply_quick(cfg)


def test_targets_on_hand_made_rows():
    def row(method, yes, men, qa, control="control", std=0.0):
        r = {"n": 3, "method": method, "control": control, "subset": None}
        r.update(prior_yes=(yes, std), prior_mention=(men, std), clear_qa=(qa, std))
        return r

    rows = {
        "sft": row("sft", 0.96, 0.5, 0.95, control=None),
        "control": row("control", 0.9, 0.3, 0.95, control=None, std=0.02),
        "povid": row("povid", 0.05, 0.2, 0.945, std=0.01),
        "lrv": row("lrv", 0.5, 0.3, 0.90),
    }
    judged = {name: met for name, met, _ in targets(rows)}
    assert judged['povid: false "yes" ≤ 0.1× SFT'] is True
    assert judged['povid: beats control on false "yes"'] is True
    assert judged["povid: clear QA ≥ SFT − 1 point"] is True
    assert judged['lrv: false "yes" ≤ 0.3× SFT'] is False
    assert judged["lrv: clear QA ≥ SFT − 1 point"] is False


def _tiny_study(tmp_path: Path) -> Path:
    cfg = {
        "model": "checkpoints/tiny-shapeworld",
        "out": str(tmp_path / "study"),
        "world": "configs/shapeworld/world.json",
        "train": {"n_images": 120, "n_videos": 0, "seed": 0, "prior_per_group": 5},
        "eval": {
            "n_images": 40,
            "n_videos": 6,
            "seed": 77,
            "val_frac": 0.0,
            "test_frac": 0.8,
            "prior_per_group": 6,
        },
        "limits": {"n_images": 6, "n_videos": 4, "n_prior": 6, "batch_size": 16, "n_mmhal": 8},
        "seeds": [0],
        "methods": [
            {"name": "sft", "method": "sft"},
            {"name": "control", "method": "control", "regimes": ["noisy"], "steps": 2, "batch": 4},
        ],
    }
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.mark.slow
def test_study_end_to_end_smoke(tmp_path):
    """Two rows (the SFT model, a 2-step control under 2-rank DeepSpeed), one seed: the report,
    results, charts; the control really trained; a rerun skips the finished run."""
    config = _tiny_study(tmp_path)
    cmd = [sys.executable, str(ROOT / "eval" / "study.py"), "--config", str(config)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "study"
    results = json.loads((out / "results.json").read_text())
    assert [(r["entry"], r["regime"]) for r in results["rows"]] == [("sft", "both"), ("control", "noisy")]
    control = results["rows"][1]
    final = Path(control["checkpoint"])
    assert (final / "mmalign.json").exists()
    for row in results["rows"]:
        m = row["measured"]
        assert 0.0 <= m["prior_yes"] <= 1.0 and 0.0 <= m["chair_s"] <= 1.0
        assert m["n"]["prior_violating"] == 6 and m["n"]["mmhal"] == 8
        assert 0.0 <= m["mmhal"] <= 6.0
    assert control["cost"]["train_wall_s"] > 0 and control["cost"]["peak_gib"] > 0
    assert (
        control["cost"]["train_cpu_s"] > 0 and control["cost"]["peak_above_start_gib"] > 0
    )  # the trainer's log
    assert all(set(r["measured_wordings"]) == {"natural", "terse"} for r in results["rows"])
    assert results["rows"][0]["measured"] == results["rows"][0]["measured_wordings"]["natural"]
    # the control really trained: its LLM weights differ from the SFT model's
    from safetensors.torch import load_file

    def llm_weights(folder: Path) -> dict:
        return {k: v for f in sorted((folder / "llm").glob("*.safetensors")) for k, v in load_file(f).items()}

    mine, base = llm_weights(final), llm_weights(ROOT / "checkpoints" / "tiny-shapeworld")
    assert any(not (mine[k] == base[k]).all() for k in base)
    report = (out / "report.md").read_text()
    assert "## Regime: noisy" in report and "| CHAIR-s |" in report and "control (n=1)" in report
    assert (out / "charts" / "prior_yes.png").stat().st_size > 1000
    # resume: nothing is retrained, measurements come from the cache
    stamp = (final / "mmalign.json").stat().st_mtime_ns
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (final / "mmalign.json").stat().st_mtime_ns == stamp
    assert "$ " not in again.stdout  # no command was launched
    # the report module reads what the runner wrote
    assert "control" in aggregate(results)["noisy"]
    assert format_report(results).startswith("# Efficacy study")


def test_finished_command_is_reused_only_with_the_same_arguments(tmp_path):
    from mmalign.eval.study.methods import Command
    from mmalign.eval.study.runner import execute

    src = tmp_path / "in.json"
    src.write_text('{"b": 1, "a": 2}')
    out = tmp_path / "out.json"
    cmd = Command(("-m", "json.tool", "--sort-keys", str(src), str(out)), out, log=tmp_path / "tool.log")
    assert execute(cmd) > 0 and out.read_text().index('"a"') < out.read_text().index('"b"')
    assert execute(cmd) == 0.0  # finished, same arguments: skipped
    changed = Command(("-m", "json.tool", str(src), str(out)), out, log=tmp_path / "tool.log")
    with pytest.raises(ValueError, match="made by another command"):
        execute(changed)


def _ppo_fact(**options) -> dict:
    return {
        "name": "ppo-fact",
        "method": "rl",
        "regimes": ["noisy"],
        "steps": 16,
        "batch": 32,
        "control": "control-rl",
        "options": {"preset": "none", "reward_model": "build", **options},
        "overrides": ["rollout_batch_size=64", "num_samples=1", "strategy.micro_batch_size=16"],
    }


CONTROL_RL = {"name": "control-rl", "method": "control", "steps": 16, "batch": 32}


def test_ppo_fact_builds_its_fact_rm_once_and_rewards_ppo_with_it(tmp_path):
    """The shipped ppo-fact row (noisy): PPO prompts, the SFT model's judged samples, the Fact-RM
    (2 ranks, shared by the seeds), then PPO on that RM's final folder with the captions prompt."""
    from mmalign.eval.study.runner import plans

    cfg = load_study(SHIPPED_CONFIG)
    entry = cfg.entry("ppo-fact")
    assert entry.regimes == ["noisy"] and "noisy" in cfg.entry(entry.control).regimes
    ctx = Context(ROOT / cfg.model, tmp_path / "train", tmp_path / "work", tmp_path / "runs", cfg.ranks)
    by_seed = [plan(ctx, entry, "noisy", seed) for seed in cfg.seeds]
    p = by_seed[0]
    prompts, prefs, rm, ppo = p.commands
    assert prompts.argv[:2] == ("data_builders/shapeworld_rlhf.py", "prompts")
    assert prefs.argv[:2] == ("data_builders/shapeworld_rlhf.py", "prefs") and prefs.ranks == 0
    assert prefs.argv[2:4] == ("--data", str(ctx.train)) and str(ctx.model) in prefs.argv
    assert str(ctx.work / "rlhf" / "ppo_prompts") in prefs.argv  # the prompts just built
    assert rm.argv[:3] == ("train/reward.py", "--config", "configs/reward/tiny_shapeworld_rlhf_fact.yaml")
    assert rm.ranks == 2 and rm.done == ctx.work / "fact-rm" / "final" / "mmalign.json"
    assert f"out={ctx.work / 'fact-rm'}" in rm.argv and f"model={ctx.model}" in rm.argv
    data = json.loads(next(a for a in rm.argv if a.startswith("data="))[5:])
    assert data == [
        {
            "path": str(ctx.work / "rlhf" / "rlhf_prefs" / "train.jsonl"),
            "media_root": str(ctx.train),
            "format": "llava_rlhf",
        }
    ]
    assert "reward_prompt=configs/prompts/fact_rlhf_reward.txt" in rm.argv
    assert {"max_steps=40", "strategy.micro_batch_size=8"} <= set(rm.argv)
    assert ppo.argv[0] == "train/ppo.py" and ppo.run == ctx.runs / "ppo-fact-noisy-s0"
    assert f"reward_model={ctx.work / 'fact-rm' / 'final'}" in ppo.argv
    assert "reward_prompt=configs/prompts/fact_rlhf_reward.txt" in ppo.argv
    assert "iterations=4" in ppo.argv and "preset=none" in ppo.argv
    assert not any(a.startswith("reward_functions=") for a in ppo.argv)
    assert p.runs == [ppo.run] and p.final == ppo.run / "final"
    # shared by the seeds: the same prefs and RM commands (one done path, same argv); PPO per seed
    for other in by_seed[1:]:
        assert [(c.done, c.argv) for c in other.commands[:3]] == [(c.done, c.argv) for c in p.commands[:3]]
        assert other.commands[3].done != ppo.done
    # the whole shipped study plans (shared commands agree); only ppo-fact's rows hold the RM
    rows = plans(cfg, ctx)
    holders = [(r.entry, r.seed) for r in rows for c in r.commands if c.done == rm.done]
    assert holders == [("ppo-fact", seed) for seed in cfg.seeds]


def test_reward_model_build_refused_where_it_makes_no_sense(tmp_path):
    ctx = Context(ROOT / "checkpoints/tiny-shapeworld", tmp_path / "t", tmp_path / "w", tmp_path / "r", 2)
    cfg = study_from_dict(_study([{**CONTROL_RL}, {**_ppo_fact(), "regimes": ["noisy", "clean"]}]))
    entry = cfg.entry("ppo-fact")
    assert len(plan(ctx, entry, "noisy", 0).commands) == 4
    with pytest.raises(ValueError, match=r"'ppo-fact'.*build is for the noisy regime only.*exact judge"):
        plan(ctx, entry, "clean", 0)
    bad = MethodEntry(**{**_ppo_fact(rm_batch=15), "regimes": ["noisy"]})
    with pytest.raises(ValueError, match=r"'ppo-fact'.*rm_batch a positive multiple of ranks 2"):
        plan(ctx, bad, "noisy", 0)
    odd = MethodEntry(**_ppo_fact(reward_model=True))
    with pytest.raises(ValueError, match=r"'ppo-fact'.*reward-model folder or 'build'"):
        plan(ctx, odd, "noisy", 0)
    # the noisy regime still needs a reward model; the message names the build option
    judge = MethodEntry(**{**_ppo_fact(), "options": {"preset": "none"}})
    with pytest.raises(ValueError, match=r"noisy regime needs options.reward_model.*'build'"):
        plan(ctx, judge, "noisy", 0)


def test_shared_command_planned_twice_with_different_options_refused(tmp_path):
    """Two entries building the one Fact-RM with different sizes would silently share the first's."""
    from mmalign.eval.study.runner import plans

    ctx = Context(ROOT / "checkpoints/tiny-shapeworld", tmp_path / "t", tmp_path / "w", tmp_path / "r", 2)
    same = study_from_dict(_study([CONTROL_RL, _ppo_fact(), {**_ppo_fact(), "name": "ppo-fact-b"}]))
    assert len(plans(same, ctx)) == 4  # control-rl in both regimes, the two PPO rows in noisy
    other = {**_ppo_fact(rm_steps=80), "name": "ppo-fact-long"}
    cfg = study_from_dict(_study([CONTROL_RL, _ppo_fact(), other]))
    with pytest.raises(
        ValueError, match=r"fact-rm/final/mmalign.json is planned by ppo-fact .* ppo-fact-long"
    ):
        plans(cfg, ctx)
