"""Every config shipped under ``configs/`` runs one step at smoke size with its own strategy knobs.

The kind of fault behind issue 14's crash (``strategy.gradient_checkpointing: true`` broke DPO and
reward-model training at ``Strategy.prepare``; only SFT tested it): a shipped config whose knobs
no test runs. Here each YAML under ``configs/sft``, ``configs/dpo``, ``configs/reward``,
``configs/ppo`` and ``configs/shapeworld`` is loaded as shipped and run by its entry script (``python train/X.py``, one
process, world 1) with only what cannot run here swapped:

* ``model`` → a tiny checkpoint this test builds with the shipped stage-0 recipe
  (``configs/shapeworld/tiny_preset.yaml``, 2 steps) on a tiny dataset generated from the shipped
  world (``configs/shapeworld/world.json``); ``temporal.yaml`` runs on it and its output feeds
  ``sft_motion.yaml`` (which expects a temporal mixer);
* every data source → that dataset (``path`` / ``media_root`` / ``format``; the source's own
  ``tasks`` / ``repeat`` / ``max_records`` stay); PPO's prompts → its LLaVA records with their
  answers as captions, its reward model (and value trunk) → the tiny checkpoint with a zero head;
  one iteration of 2 prompts and 6 new tokens;
* length and sizes: 1 step, ``micro_batch_size`` 2, ``grad_accum`` ≤ 2, no periodic saves.

Everything else stays as shipped: ZeRO stage, the DeepSpeed JSON, gradient checkpointing, LoRA,
bf16 (DeepSpeed runs bf16 on this CPU), POVID's noise term, the reference kind, the reward prompt.
Marked ``slow`` (~2–3 min on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmalign.models.heads import ScalarHead
from mmalign.preference.reward_model import save_head
from tests.distributed import ROOT, dist_env

pytestmark = pytest.mark.slow
CONFIGS = ROOT / "configs"
TRAINERS = {"sft": "sft.py", "dpo": "dpo.py", "reward": "reward.py", "ppo": "ppo.py"}
# configs/shapeworld/*.yaml → the script that reads it (the SFT stages otherwise)
SHAPEWORLD_SCRIPTS = {"tiny_preset.yaml": "stage0.py", "temporal.yaml": "temporal.py"}


def shipped() -> list[tuple[str, Path]]:
    """(script, config) for every trainer config shipped (the stage-0 preset is the fixture)."""
    found = []
    for kind, script in TRAINERS.items():
        found += [(script, p) for p in sorted((CONFIGS / kind).glob("*.yaml"))]
    for p in sorted((CONFIGS / "shapeworld").glob("*.yaml")):
        if p.name != "tiny_preset.yaml":
            found.append((SHAPEWORLD_SCRIPTS.get(p.name, "sft.py"), p))
    return found


# Shipped DeepSpeed JSONs no YAML names (zero2.json and zero3.json run above): with a config that fits.
DEEPSPEED_JSONS = [("zero3_offload.json", CONFIGS / "dpo" / "llava15_7b_povid.yaml")]


def run_script(script: str, config: dict, work: Path, name: str, timeout: int = 240) -> str:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train" / script), "--config", str(path)],
        cwd=ROOT,  # shipped configs name configs/deepspeed/*.json and configs/prompts/* relatively
        env=dist_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{script} {name}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny ShapeWorld dataset (images + videos, pairs with captions) and the stage-0 base."""
    from mmalign.preference.shapeworld_pairs import build_pairs
    from mmalign.shapeworld import WorldConfig, generate

    root = tmp_path_factory.mktemp("shipped")
    data = root / "data"
    cfg = WorldConfig.from_dict(json.loads((CONFIGS / "shapeworld" / "world.json").read_text()))
    generate(data, n_images=40, n_videos=12, seed=5, cfg=cfg, progress=False, prior_per_group=2)
    pairs = build_pairs(data, "train")[:16]
    (data / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    preset = yaml.safe_load((CONFIGS / "shapeworld" / "tiny_preset.yaml").read_text())
    preset.update(data=str(data), out=str(root / "base"))
    preset["stage0"].update(steps=2, batch_size=8, log_every=1)
    run_script("stage0.py", preset, root, "tiny_preset")
    records = [r for r in json.loads((data / "llava" / "train.json").read_text()) if "image" in r][:4]
    prompts = [dict(r, captions=[r["conversations"][1]["value"]]) for r in records]
    (data / "ppo_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    shutil.copytree(root / "base", root / "rm")
    hidden = json.loads((root / "base" / "llm" / "config.json").read_text())["hidden_size"]
    save_head(ScalarHead(hidden), root / "rm")
    return {"root": root, "data": data, "base": root / "base", "rm": root / "rm"}


def smoke(script: str, config: dict, world: dict[str, Path], out: Path, model: Path) -> dict:
    """The shipped config with model, data, length and sizes swapped (its knobs kept)."""
    cfg = dict(config, model=str(model), out=str(out), max_steps=1, save_every=0, log_every=1, resume="none")
    sources = []
    for src in cfg.get("data", []):
        name = Path(src["path"]).name
        if script != "sft.py" or "pairs" in src["path"]:  # preference pairs (SFT reads their chosen)
            path = world["data"] / "pairs.jsonl"
        else:
            path = world["data"] / "llava" / ("train_prior.json" if "prior" in name else "train.json")
        src = {k: v for k, v in src.items() if k not in ("path", "media_root", "format")}
        if src.get("max_records"):
            src["max_records"] = min(src["max_records"], 16)
        sources.append(dict(src, path=str(path), media_root=str(world["data"])))
    cfg["data"] = sources
    if script == "ppo.py":
        cfg.update(
            prompts=str(world["data"] / "ppo_prompts.jsonl"), media_root=str(world["data"]), captions=None
        )
        cfg.update(reward_model=str(world["rm"]), value_model=None, iterations=1, rollout_batch_size=2)
        cfg.update(max_new_tokens=6, generation_batch_size=2, plot=False)
        cfg.pop("data", None)
        cfg.pop("max_steps", None)  # RL counts iterations
    strategy = dict(cfg.get("strategy", {}))
    strategy.update(micro_batch_size=2, grad_accum=min(int(strategy.get("grad_accum", 1)), 2))
    if script == "ppo.py":  # the step batch must divide the rollout of 2 prompts
        strategy.update(micro_batch_size=1, grad_accum=1)
    cfg["strategy"] = strategy
    return cfg


@pytest.mark.parametrize(("script", "path"), shipped(), ids=lambda v: getattr(v, "name", v))
def test_shipped_config_runs_one_step(world, script: str, path: Path, tmp_path) -> None:
    config = yaml.safe_load(path.read_text())
    out = tmp_path / "run"
    if script == "temporal.py":
        config.update(init_from=str(world["base"]), data=str(world["data"]), out=str(out))
        config.update(steps=2, batch_size=4, eval_clips=2, log_every=1, warmup=1)
        run_script(script, config, tmp_path, path.stem)
        assert any(out.iterdir()), "temporal.py wrote nothing"
        return
    model = world["base"]
    if path.name == "sft_motion.yaml":  # expects stage 4's temporal mixer: run it first
        temporal = yaml.safe_load((CONFIGS / "shapeworld" / "temporal.yaml").read_text())
        temporal.update(init_from=str(world["base"]), data=str(world["data"]), out=str(tmp_path / "temporal"))
        temporal.update(steps=2, batch_size=4, eval_clips=2, log_every=1, warmup=1)
        run_script("temporal.py", temporal, tmp_path, "temporal")
        model = tmp_path / "temporal"
    cfg = smoke(script, config, world, out, model)
    log = run_script(script, cfg, tmp_path, path.stem)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert records and records[-1]["step"] == 1, log[-2000:]
    assert all(v == v for v in records[-1].values() if isinstance(v, float)), records[-1]  # no NaN
    lora = config.get("lora", {}).get("enabled", False)
    assert (out / ("final_adapter" if lora else "final")).is_dir(), sorted(p.name for p in out.iterdir())
    checkpointing = bool(config.get("strategy", {}).get("gradient_checkpointing"))
    modules = (
        2 if script == "ppo.py" and config.get("layout", "separate") == "separate" else 1
    )  # + the value LMM
    assert (f"gradient checkpointing in {modules} module(s)" in log) == checkpointing, log[-2000:]


@pytest.mark.parametrize(("json_name", "path"), DEEPSPEED_JSONS, ids=lambda v: getattr(v, "name", v))
def test_shipped_deepspeed_json_runs_one_step(world, json_name: str, path: Path, tmp_path) -> None:
    """ZeRO-3 with optimizer and parameter offload (DeepSpeedCPUAdam) under the POVID/LoRA recipe."""
    config = yaml.safe_load(path.read_text())
    config["strategy"] = dict(config["strategy"], deepspeed_config=f"configs/deepspeed/{json_name}")
    out = tmp_path / "run"
    log = run_script("dpo.py", smoke("dpo.py", config, world, out, world["base"]), tmp_path, json_name)
    assert "offload optimizer→cpu param→cpu" in log and "DeepSpeedCPUAdam" in log, log[-2000:]
    assert (out / "final_adapter").is_dir()
