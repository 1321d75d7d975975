"""i-SRT in the efficacy study: the matched control's config rules, the planned commands, the
matched control's inputs from a finished run, and (slow) the two rows end to end at smoke size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmalign.config import ConfigError
from mmalign.eval.study.config import apply_quick, load_study, study_from_dict
from mmalign.eval.study.isrt import check_budget_current, link_final, write_control
from mmalign.eval.study.methods import Context, plan
from tests.test_isrt_proof import fake_pool, fake_run

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "configs" / "study" / "shapeworld.yaml"
ISRT = {"name": "isrt", "method": "isrt", "regimes": ["noisy"], "batch": 16, "control": "control-isrt"}
MATCHED = {
    "name": "control-isrt",
    "method": "control",
    "regimes": ["noisy"],
    "batch": 16,
    "options": {"match": "isrt"},
}
PLAIN = {"name": "control", "method": "control", "steps": 10, "batch": 16}


def _study(methods: list[dict]) -> dict:
    return {"methods": [{"name": "sft", "method": "sft"}, *methods]}


def test_matched_budget_rules_refused_with_the_entry_named():
    cfg = study_from_dict(_study([ISRT, MATCHED]))
    assert cfg.entry("isrt").matched and cfg.entry("control-isrt").matched and not cfg.entry("sft").matched
    refused = {
        r"'isrt': leave steps out": [{**ISRT, "steps": 10}, MATCHED],
        r"'control-isrt': leave steps out": [ISRT, {**MATCHED, "steps": 10}],
        r"'isrt': an i-SRT entry's control must be matched to it": [PLAIN, {**ISRT, "control": "control"}],
        r"'control-isrt': options.match must name an isrt entry, got 'dpo'": [{**MATCHED, "options": {"match": "dpo"}}],
        r"'control-isrt': list it after 'isrt'": [MATCHED, ISRT],
        r"'isrt': budget mismatch": [{**ISRT, "batch": 32}, MATCHED],
        r"'isrt': set regimes: \[noisy\]": [{**ISRT, "regimes": ["noisy", "clean"]}, MATCHED],
        r"'control-isrt': set regimes: \[noisy\]": [ISRT, {k: v for k, v in MATCHED.items() if k != "regimes"}],
        r"'control-isrt': unknown option\(s\) \['corpus'\]": [ISRT, {**MATCHED, "options": {"match": "isrt", "corpus": 9}}],
        r"'isrt': unknown option\(s\) \['rounds'\]": [{**ISRT, "options": {"rounds": 2}}, MATCHED],
        r"'isrt': options.iterations must be an integer ≥ 1, got 0": [{**ISRT, "options": {"iterations": 0}}, MATCHED],
        r"'isrt': options.judge must be one of": [{**ISRT, "options": {"judge": "gpt"}}, MATCHED],
        r"'isrt': options.context must be one of": [{**ISRT, "options": {"context": "past"}}, MATCHED],
        r"'isrt': override 'iterations=5' changes what the study sets": [{**ISRT, "overrides": ["iterations=5"]}, MATCHED],
        r"'isrt': override 'pool.path=x' changes": [{**ISRT, "overrides": ["pool.path=x"]}, MATCHED],
        r"'isrt': override 'seed=3' changes": [{**ISRT, "overrides": ["seed=3"]}, MATCHED],
        r"'control-2': matched to 'isrt', whose control is 'control-isrt'": [ISRT, MATCHED, {**MATCHED, "name": "control-2"}],
    }  # fmt: skip
    for message, methods in refused.items():
        with pytest.raises(ConfigError, match=message):
            study_from_dict(_study(methods))
    dpo = {"name": "dpo", "method": "dpo", "batch": 16, "steps": 1, "control": "control-isrt"}
    with pytest.raises(ConfigError, match=r"'dpo': control 'control-isrt' is matched to another entry"):
        study_from_dict(_study([ISRT, MATCHED, dpo]))
    # --quick's step count leaves the matched rows alone (their steps are the run's) …
    quick = apply_quick(study_from_dict({**_study([PLAIN, ISRT, MATCHED]), "quick": {"steps": 5}}))
    assert [(m.name, m.steps) for m in quick.methods if m.seeded] == [
        ("control", 5),
        ("isrt", 0),
        ("control-isrt", 0),
    ]
    # … and refuses a matched control without its i-SRT entry, or an i-SRT entry without a regime
    alone = study_from_dict({**_study([PLAIN, ISRT, MATCHED]), "quick": {"methods": ["control-isrt"]}})
    with pytest.raises(
        ConfigError, match=r"keeps the matched control\(s\) \['control-isrt'\] but not the i-SRT"
    ):
        apply_quick(alone)
    none = study_from_dict({**_study([ISRT, MATCHED]), "quick": {"regimes": {"isrt": []}}})
    with pytest.raises(ConfigError, match=r"quick: method entry 'isrt': set regimes: \[noisy\]"):
        apply_quick(none)


def test_shipped_isrt_rows_plan_a_shared_start_a_run_per_seed_and_a_matched_control(tmp_path):
    from mmalign.eval.study.runner import plans

    cfg = load_study(SHIPPED_CONFIG)
    entry, control = cfg.entry("isrt"), cfg.entry("control-isrt")
    assert entry.regimes == control.regimes == ["noisy"] and len(cfg.seeds) >= 3
    ctx = Context(ROOT / cfg.model, tmp_path / "train", tmp_path / "work", tmp_path / "runs", cfg.ranks)
    rows = [r for r in plans(cfg, ctx) if r.entry in ("isrt", "control-isrt")]
    assert [(r.entry, r.seed) for r in rows] == [("isrt", s) for s in cfg.seeds] + [
        ("control-isrt", s) for s in cfg.seeds
    ]
    first = rows[0]
    pool, fmt_data, start, run, final = first.commands
    assert pool.argv[:2] == ("data_builders/shapeworld_isrt.py", "pool") and fmt_data.argv[1] == "format"
    assert start.argv[:3] == ("train/sft.py", "--config", "configs/isrt/judge_format.yaml")
    assert start.done == ctx.work / "isrt" / "format" / "final" and f"model={ctx.model}" in start.argv
    assert {"max_steps=300"} <= set(start.argv) and start.ranks == 2
    assert start.run is None and pool.run is None  # shared: in no row's training cost
    assert run.argv[:3] == ("train/isrt.py", "--config", "configs/isrt/tiny_shapeworld.yaml")
    expected = {f"model={start.done}", f"out={ctx.runs / 'isrt-noisy-s0'}", "judge=self", "context=retrospective",
                "iterations=3", "pool.per_iteration=64", "seed=0", "strategy.micro_batch_size=8",
                f"pool.path={pool.done}", f"pool.media_root={ctx.train}"}  # fmt: skip
    assert expected <= set(run.argv) and run.done == ctx.runs / "isrt-noisy-s0" / "done.json"
    assert final.argv[:3] == ("-m", "mmalign.eval.study.isrt", "final") and final.ranks == 0
    assert first.final == ctx.runs / "isrt-noisy-s0" / "final" and first.runs == [run.run]
    for other in rows[1 : len(cfg.seeds)]:  # the seeds share the start, not the run
        assert [(c.done, c.argv) for c in other.commands[:3]] == [
            (c.done, c.argv) for c in first.commands[:3]
        ]
        assert f"seed={other.seed}" in other.commands[3].argv and other.commands[3].done != run.done
    ctrl = rows[len(cfg.seeds)]
    build, train = ctrl.commands
    inputs = ctx.work / "isrt" / "matched" / "isrt-noisy-s0"
    assert build.argv[:3] == ("-m", "mmalign.eval.study.isrt", "control")
    assert build.done == ctx.runs / "control-isrt-noisy-s0" / "budget.json"  # deleting the run rebuilds it
    assert str(ctx.runs / "isrt-noisy-s0") in build.argv and str(pool.done) in build.argv
    assert train.argv[:3] == ("train/sft.py", "--config", str(inputs / "config.yaml"))
    assert f"model={start.done}" in train.argv and "strategy.micro_batch_size=8" in train.argv
    assert ctrl.budget == first.budget == inputs / "budget.json" and ctrl.runs == [train.run]


def test_isrt_planners_refuse_the_clean_regime(tmp_path):
    ctx = Context(ROOT / "checkpoints/tiny-shapeworld", tmp_path / "t", tmp_path / "w", tmp_path / "r", 2)
    cfg = study_from_dict(_study([{**ISRT, "options": {"iterations": 2}}, MATCHED]))
    assert "iterations=2" in plan(ctx, cfg.entry("isrt"), "noisy", 0).commands[3].argv
    with pytest.raises(ValueError, match=r"'isrt': i-SRT runs in the noisy regime only"):
        plan(ctx, cfg.entry("isrt"), "clean", 0)
    with pytest.raises(ValueError, match=r"'control-isrt': i-SRT runs in the noisy regime only"):
        plan(ctx, cfg.entry("control-isrt"), "clean", 0)


def _start(tmp_path: Path) -> Path:
    start = tmp_path / "format" / "final"
    start.mkdir(parents=True)
    (start / "mmalign.json").write_text("{}")
    return start


def test_matched_control_gets_the_runs_pairs_prompts_annotations_and_dpo_steps(tmp_path):
    start = _start(tmp_path)
    run = fake_run(tmp_path / "runs", [["p1", "p2"], [], ["p3"]], start)
    out, control_run = tmp_path / "matched", tmp_path / "runs" / "control-isrt-noisy-s0"
    budget = write_control(run, fake_pool(tmp_path / "pool.jsonl"), tmp_path / "media", out, control_run)
    # the DPO stages' steps as recorded by each iteration (fake: 2 per pair), one record per pair
    assert {k: budget[k] for k in ("steps", "pairs", "records", "start", "run")} == {
        "steps": 6, "pairs": 3, "records": 3, "start": str(start), "run": str(run),
    }  # fmt: skip
    assert (
        json.loads((out / "budget.json").read_text())
        == budget
        == json.loads((control_run / "budget.json").read_text())
    )
    data = json.loads((out / "data.json").read_text())
    assert [(r["id"], r["conversations"][1]["value"]) for r in data] == [
        ("p1-t0", "yes"),
        ("p2-t0", "no"),
        ("p3-t2", "yes"),
    ]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["max_steps"] == 6 and cfg["optim"]["warmup_steps"] == 2
    assert cfg["data"] == [{"path": str(out / "data.json"), "media_root": str(tmp_path / "media")}]
    shipped = yaml.safe_load((ROOT / "configs/shapeworld/control.yaml").read_text())
    assert {k: v for k, v in cfg.items() if k not in ("data", "max_steps", "optim")} == {
        k: v for k, v in shipped.items() if k not in ("data", "max_steps", "optim")
    }
    assert not (control_run / "final").exists()  # steps to train: the control's train/sft.py makes its final
    assert check_budget_current(out / "budget.json") == budget
    assert link_final(run) == run / "iter_2" / "dpo" / "final"
    assert (run / "final").resolve() == (run / "iter_2" / "dpo" / "final").resolve()
    # the run redone with other pairs: the control built from the old one is refused, not reused
    (run / "iter_2" / "dpo.done").write_text(json.dumps({"model": str(start), "pairs": 0}))
    with pytest.raises(ValueError, match=r"changed after its matched control was built from it"):
        check_budget_current(out / "budget.json")
    assert link_final(run) == start and (run / "final").resolve() == start.resolve()  # the link follows


def test_a_run_without_pairs_is_its_start_model_and_so_is_its_control(tmp_path):
    start = _start(tmp_path)
    run = fake_run(tmp_path / "runs", [[], [], []], start)
    control_run = tmp_path / "runs" / "control-isrt-noisy-s0"
    budget = write_control(
        run, fake_pool(tmp_path / "pool.jsonl"), tmp_path, tmp_path / "matched", control_run
    )
    assert (budget["steps"], budget["pairs"], budget["records"]) == (0, 0, 0)
    assert (control_run / "final").resolve() == start.resolve() and (
        control_run / "final" / "mmalign.json"
    ).exists()
    assert link_final(run) == start and os.path.islink(run / "final")
    # a trained control's final (a stale control of another run) is never replaced by a link
    stale = tmp_path / "runs" / "control-stale"
    (stale / "final").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=r"is a trained model, not a link"):
        write_control(run, tmp_path / "pool.jsonl", tmp_path, tmp_path / "matched-stale", stale)
    # its cost: nothing trained, no metrics.jsonl — NaN, not an error
    from mmalign.eval.study.runner import training_cost

    cost = training_cost([control_run])
    assert all(math.isnan(cost[k]) for k in ("train_wall_s", "train_cpu_s", "peak_gib")) and "rl" not in cost
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with pytest.raises(FileNotFoundError, match="has not finished"):
        link_final(unfinished)
    with pytest.raises(FileNotFoundError, match="has not finished"):
        write_control(unfinished, tmp_path / "pool.jsonl", tmp_path, tmp_path / "m2", tmp_path / "c2")


@pytest.mark.slow
def test_isrt_rows_end_to_end_at_smoke_size(tmp_path):
    """The i-SRT row and its matched control in a one-seed study: the format start model, i-SRT
    (2 ranks, exact judge so that DPO gets pairs), the matched control trained at DPO's steps, both
    measured; a rerun launches nothing."""
    cfg = {
        "model": "checkpoints/tiny-shapeworld",
        "out": str(tmp_path / "study"),
        "world": "configs/shapeworld/world.json",
        "train": {"n_images": 40, "n_videos": 30, "seed": 0, "prior_per_group": 2},
        "eval": {"n_images": 20, "n_videos": 8, "seed": 77, "val_frac": 0.0, "test_frac": 0.8, "prior_per_group": 4},
        "limits": {"n_images": 4, "n_videos": 4, "n_prior": 4, "batch_size": 16, "n_mmhal": 0},
        "wordings": ["natural"],
        "seeds": [0],
        "methods": [
            {**ISRT, "options": {"iterations": 1, "per_iteration": 16, "format_steps": 4, "judge": "oracle"},
             "overrides": ["context_max_new_tokens=16", "max_new_tokens=8", "temperature=2.0"]},
            MATCHED,
        ],
    }  # fmt: skip
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps(cfg))
    cmd = [sys.executable, str(ROOT / "eval" / "study.py"), "--config", str(config)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "study"
    results = json.loads((out / "results.json").read_text())
    rows = {r["entry"]: r for r in results["rows"]}
    assert set(rows) == {"isrt", "control-isrt"}
    budget = rows["isrt"]["budget"]
    assert budget == rows["control-isrt"]["budget"] and budget["steps"] > 0 and budget["pairs"] > 0
    assert rows["isrt"]["steps"] == rows["control-isrt"]["steps"] == budget["steps"]
    run = out / "runs" / "isrt-noisy-s0"
    assert Path(rows["isrt"]["checkpoint"]).resolve() == (run / "iter_0" / "dpo" / "final").resolve()
    control = out / "runs" / "control-isrt-noisy-s0"
    logged = [json.loads(x) for x in (control / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert max(r["step"] for r in logged if "step" in r) == budget["steps"]  # DPO's optimizer steps
    assert (
        yaml.safe_load((out / "work/isrt/matched/isrt-noisy-s0/config.yaml").read_text())["max_steps"]
        == budget["steps"]
    )
    for r in rows.values():
        m = r["measured"]
        assert 0.0 <= m["video_motion"] <= 1.0 and 0.0 <= m["video_prior_yes"] <= 1.0
    assert rows["isrt"]["cost"]["launch_wall_s"] > 0 and rows["control-isrt"]["cost"]["train_wall_s"] > 0
    report = (out / "report.md").read_text()
    assert "isrt (n=1)" in report and "control-isrt (n=1)" in report
    assert f"- isrt seed 0: {budget['pairs']} pairs, {budget['steps']} DPO steps" in report
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ " not in again.stdout  # nothing launched again
