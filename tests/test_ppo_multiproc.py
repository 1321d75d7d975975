"""train/ppo.py under DeepSpeed ZeRO-3 with 2 real ranks (gloo, CPU), parameters really partitioned.

Marked ``multiproc``. The prompts mix images, videos and text-only turns, one prompt per decoding
batch and per micro-batch, so at some step one rank holds a video or text-only prompt while the
other holds an image (checked against the data order) — the blank-media rule must keep the ranks
in step; sampled responses end at different lengths on the two ranks. Checks: no hang (timeout),
the PPO ratio is 1 on the first micro-batch, every metric is logged, the policy's and the value
model's trainable tensors change and frozen ones do not, curves are drawn; a run SIGKILLed after
a checkpoint and resumed ends with the same weights as an uninterrupted one (KL controller,
sampling RNG and data position included).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from mmalign.eval.rl_compare import run_cost
from mmalign.models.checkpoint import load_lmm
from tests.distributed import ROOT, dist_env, kill_tree, run, torchrun_cmd

pytestmark = pytest.mark.multiproc
PPO = ROOT / "train" / "ppo.py"
ZERO3 = {
    "zero_stage": 3,
    "micro_batch_size": 1,
    "grad_accum": 2,
    "stage3_max_live_parameters": 1000,
    "stage3_max_reuse_distance": 0,
    "stage3_param_persistence_threshold": 0,
}


def _kind(rec: dict) -> str:
    return "video" if "video" in rec else "image" if "image" in rec else "text"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny base checkpoint, a reward model on it (a random head), and mixed-media prompts."""
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.data.tokenizer import train_bpe_tokenizer
    from mmalign.models.builders import tiny_lmm, tiny_vision
    from mmalign.models.checkpoint import save_lmm
    from mmalign.models.heads import ScalarHead
    from mmalign.preference.reward_model import save_head
    from mmalign.shapeworld import WorldConfig, generate
    from mmalign.shapeworld.recipe.tiny_preset import shapeworld_texts

    root = tmp_path_factory.mktemp("ppo")
    data = root / "data"
    generate(data, n_images=12, n_videos=4, seed=5, cfg=WorldConfig(), progress=False)
    records = json.loads((data / "llava" / "train.json").read_text())
    images = [r for r in records if "image" in r][:6]
    videos = [r for r in records if "video" in r][:3]
    prompts = []
    for r in images + videos:
        answer = r["conversations"][1]["value"]
        prompts.append({**r, "captions": [answer]})
    for i in range(3):
        prompts.append(
            {
                "id": f"text-{i}",
                "conversations": [{"from": "human", "value": "Name a shape."}],
                "captions": ["a text-only turn has no image"],
            }
        )
    (data / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    tok = train_bpe_tokenizer(shapeworld_texts(data), vocab_size=400)
    vision = tiny_vision(
        image_size=60, patch_size=20, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    model = tiny_lmm(
        tok, vision, llm_hidden_size=48, llm_layers=2, llm_heads=4, llm_intermediate_size=96, seed=1
    )
    # Make the stop token likely (its logit follows one hidden unit), so sampled responses end at
    # different lengths and the ranks stop decoding at different steps — a random tiny model would
    # otherwise always run to max_new_tokens.
    stop = MultimodalProcessor.for_model(model, tok).stop_token_ids[0]
    with torch.no_grad():
        model.llm.model.norm.weight[0] = 5.0  # at the base: lengths 2–10 of 10, ~half stopped
        model.llm.lm_head.weight[:, 0] = 0.0
        model.llm.lm_head.weight[stop, 0] = 1.0
    save_lmm(model, tok, root / "base")
    save_lmm(model, tok, root / "rm")
    torch.manual_seed(0)
    head = ScalarHead(48, zero_init=False)
    torch.nn.init.normal_(head.weight, std=0.5)
    save_head(head, root / "rm")
    return root


def config(base: Path, out: Path, **over) -> Path:
    fields = {
        "model": str(base / "base"),
        "out": str(out),
        "prompts": str(base / "data" / "prompts.jsonl"),
        "media_root": str(base / "data"),
        "reward_model": str(base / "rm"),
        "reward_prompt": str(ROOT / "configs" / "prompts" / "fact_rlhf_reward.txt"),
        "parts": {"train_vision": False, "train_projector": False, "train_llm": True},
        "optim": {"lr": 1.0e-3, "schedule": "constant"},
        "strategy": dict(ZERO3),
        "iterations": 3,
        "rollout_batch_size": 4,
        "num_samples": 2,
        "ppo_epochs": 2,
        "max_new_tokens": 10,
        "generation_batch_size": 1,
        "gather_for_generation": False,
        "kl_target": 0.5,
        "kl_horizon": 100,
        "log_every": 1,
        "seed": 0,
    }
    fields.update(over)
    path = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def state(path: Path) -> dict[str, torch.Tensor]:
    return dict(load_lmm(path)[0].state_dict())


def test_ranks_hold_different_media_at_the_same_step(base):
    """The premise of the no-hang test: some micro-batch pairs an image with a video or text-only prompt."""
    from mmalign.data.datasets import ExampleOrder

    recs = [json.loads(x) for x in (base / "data" / "prompts.jsonl").read_text().splitlines()]
    order = ExampleOrder(len(recs), 0, 2, 1, 2)
    mixed = [
        it
        for it in range(3)
        for a, b in zip(order.micro_batch(it, 0, 0), order.micro_batch(it, 0, 1), strict=True)
        if {_kind(recs[a]), _kind(recs[b])} != {"image"} and _kind(recs[a]) != _kind(recs[b])
    ]
    assert mixed, "no step pairs different media kinds across ranks"


@pytest.fixture(scope="module")
def synced_run(base) -> Path:
    """3 iterations, weights not gathered for generation (synced_gpus), adaptive KL, save every 1."""
    out = base / "synced"
    run(torchrun_cmd(PPO, ["--config", str(config(base, out, save_every=1))]), timeout=420)
    return out


def test_ppo_zero3_trains_without_hanging(base, synced_run):
    recs = metrics(synced_run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    first = recs[0]
    assert first["policy/ratio_first"] < 1e-4  # the rollout scored with the weights it trains from
    assert abs(first["kl/sequence"]) < 1e-4  # policy == reference before the first update
    for key in (
        "reward/rm", "reward/total", "reward/no_eos", "kl/coef", "policy/clip_fraction", "policy/approx_kl",
        "policy/entropy", "value/explained_variance", "response/length", "response/no_eos",
        "rollout/tok_s", "train/tok_s", "loss/policy", "loss/value",
    ):  # fmt: skip
        assert all(key in r for r in recs), key
    assert recs[-1]["kl/sequence"] != 0.0  # the policy moved away from the reference
    samples = [json.loads(x) for x in (synced_run / "samples.jsonl").read_text().splitlines()]
    samples = [x for x in samples if x["step"] == 1]  # sampled from the base model
    lengths = {x["tokens"] for x in samples}
    assert len(lengths) >= 2 and any(x["finished"] for x in samples), (
        lengths
    )  # responses stop at different steps
    assert recs[0]["response/no_eos"] < 1.0
    assert recs[1]["kl/coef"] != recs[0]["kl/coef"]  # the adaptive controller acted
    before, after = state(base / "base"), state(synced_run / "final")
    llm = [k for k in before if k.startswith("llm.") and "embed_tokens" not in k]
    assert all(not torch.equal(before[k], after[k]) for k in llm)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("vision.", "projector.")))
    assert (synced_run / "curves.png").stat().st_size > 0
    value_ckpt = synced_run / "checkpoints" / "step_000003" / "value"
    assert value_ckpt.is_dir()  # the value engine is checkpointed with the policy


def test_ppo_gathered_generation_shared_lora(base, tmp_path):
    """Weights gathered once per rollout (ranks stop at different lengths freely); policy and value
    as two LoRA adapters on one base in one engine, the reference = adapters disabled; the
    llava_rlhf preset's fixed buffer (padding scored, reward at the last column)."""
    out = tmp_path / "lora"
    cfg = config(
        base, out, iterations=2, gather_for_generation=True, preset="llava_rlhf", layout="shared_lora",
        rollout_batch_size=4, max_new_tokens=8, max_prompt_length=200,
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
        optim={"lr": 1.0e-3, "schedule": "constant"}, strategy=dict(ZERO3),
    )  # fmt: skip
    run(torchrun_cmd(PPO, ["--config", str(cfg)]), timeout=420)
    recs = metrics(out)
    assert [r["step"] for r in recs] == [1, 2]
    assert recs[0]["policy/ratio_first"] < 1e-4 and abs(recs[0]["kl/sequence"]) < 1e-4
    assert recs[0]["kl/coef"] == pytest.approx(0.1)
    assert recs[1]["values/mean"] != 0.0  # the value head trained (it starts at zero)
    assert not (out / "checkpoints" / "step_000002" / "value").exists()  # one engine holds both
    adapter = json.loads((out / "final_adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and not (out / "final_adapter" / "value").exists()  # the policy only


def kill_after_first_checkpoint(cfg: Path, out: Path) -> str:
    """Start the run, SIGKILL the launcher and both ranks once a checkpoint exists; the tag it left."""
    proc = subprocess.Popen(
        torchrun_cmd(PPO, ["--config", str(cfg)]), cwd=ROOT, env=dist_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() >= "step_000001"):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    kill_tree(proc.pid)
    proc.wait()
    killed_at = latest.read_text().strip()
    assert not (out / "final").exists() and int(killed_at.split("_")[1]) < 3, "nothing was interrupted"
    return killed_at


def test_sigkill_then_resume_gives_identical_weights(base, synced_run, tmp_path):
    out = tmp_path / "killed"
    cfg = config(base, out, save_every=1)
    killed_at = kill_after_first_checkpoint(cfg, out)
    second = run(torchrun_cmd(PPO, ["--config", str(cfg)]), timeout=420)
    assert f"start at step {int(killed_at.split('_')[1])}" in second.stdout
    a, b = state(synced_run / "final"), state(out / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume from {killed_at}"
    ra, rb = metrics(synced_run), metrics(out)
    assert [r["kl/coef"] for r in ra] == [r["kl/coef"] for r in rb]
    assert [r["reward/rm"] for r in ra] == [r["reward/rm"] for r in rb]


REWARD_FN = """
def words(records, responses):
    assert all("id" in r and "captions" in r for r in records)
    return [min(len(t.split()), 5) / 5.0 for t in responses]
"""


@pytest.mark.parametrize("estimator", ["remax", "rloo", "grpo"])
def test_critic_free_estimators_zero3(base, tmp_path, estimator):
    """ReMax / RLOO / GRPO on the same engine: no value model, the reward model (image + captions)
    and a Python reward function together, mixed media on 2 ZeRO-3 ranks (no hang)."""
    fn = tmp_path / "reward_fn.py"
    fn.write_text(REWARD_FN)
    out = tmp_path / estimator
    cfg = config(
        base, out, preset=estimator, iterations=2, num_samples=1 if estimator == "remax" else 2,
        reward_functions=[{"spec": f"{fn}:words", "weight": 0.5}], kl_target=None,
    )  # fmt: skip
    run(torchrun_cmd(PPO, ["--config", str(cfg)]), timeout=420)
    recs = metrics(out)
    assert [r["step"] for r in recs] == [1, 2]
    assert recs[0]["policy/ratio_first"] < 1e-4 and abs(recs[0]["kl/sequence"]) < 1e-4
    assert "reward/rm" in recs[0] and "reward/fn/words" in recs[0]
    assert ("groups/reward_std" if estimator == "grpo" else "baseline/mean") in recs[0]
    assert "loss/value" not in recs[0] and not (out / "checkpoints" / "step_000002" / "value").exists()
    assert ("remax/sample_minus_greedy" in recs[0]) == (estimator == "remax")
    assert ("loss/kl" in recs[0]) == (estimator == "grpo")
    # the cost of the run, as eval/rl_compare.py reads it: tokens of all ranks (ReMax's greedy too)
    cfg_out = yaml.safe_load((out / "config.yaml").read_text())
    k = cfg_out["num_samples"]
    sampled = [r["response/length"] * cfg_out["rollout_batch_size"] * k for r in recs]
    for r, n in zip(recs, sampled, strict=True):
        assert r["rollout/generated_tokens"] >= n + (
            cfg_out["rollout_batch_size"] if estimator == "remax" else 0
        )
        if estimator != "remax":
            assert r["rollout/generated_tokens"] == pytest.approx(n)
        assert r["memory/peak_gib"] > r["memory/peak_above_start_gib"] > 0 and r["cpu_s"] > 0
    cost = run_cost(out)
    assert cost["estimator"] == estimator and cost["reward"] == "rm+" + f"{fn}:words"
    assert cost["responses"] == 2 * cfg_out["rollout_batch_size"] * k * (2 if estimator == "remax" else 1)
    assert cost["generated_tokens"] == sum(r["rollout/generated_tokens"] for r in recs)
    before, after = state(base / "base"), state(out / "final")
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("llm."))


def test_grpo_sigkill_then_resume_gives_identical_weights(base, tmp_path):
    """A critic-free run resumes exactly too (one engine, the sampling RNG, the data position)."""
    common = {"preset": "grpo", "num_samples": 2, "kl_target": None, "kl_coef": 0.05, "save_every": 1}
    straight = tmp_path / "straight"
    run(torchrun_cmd(PPO, ["--config", str(config(base, straight, **common))]), timeout=420)
    out = tmp_path / "killed"
    cfg = config(base, out, **common)
    killed_at = kill_after_first_checkpoint(cfg, out)
    run(torchrun_cmd(PPO, ["--config", str(cfg)]), timeout=420)
    a, b = state(straight / "final"), state(out / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume from {killed_at}"
    assert [r["loss/kl"] for r in metrics(straight)] == [r["loss/kl"] for r in metrics(out)]
