"""SFT under DeepSpeed with real ranks (gloo, CPU): ZeRO-3 training, accumulation invariance,
SIGKILL + resume equality, LoRA export/reload. Marked ``multiproc`` (selected by ``make test``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmalign.data.formats import load_llava
from mmalign.data.processor import MultimodalProcessor
from mmalign.models.checkpoint import load_lmm
from tests.distributed import ROOT, deepspeed_cmd, dist_env, kill_tree, run, torchrun_cmd, write_sft_config

pytestmark = pytest.mark.multiproc
# Warmup then cosine, so that resuming must restore the scheduler too.
SCHEDULE = {"lr": 3.0e-3, "warmup_steps": 3, "schedule": "cosine", "min_lr_ratio": 0.1}
SFT = ROOT / "train" / "sft.py"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A ShapeWorld mini-dataset (images, mp4 videos, text-only records) and a tiny base checkpoint."""
    from mmalign.data.tokenizer import train_bpe_tokenizer
    from mmalign.models.builders import tiny_lmm, tiny_vision
    from mmalign.models.checkpoint import save_lmm
    from mmalign.shapeworld import WorldConfig, generate
    from mmalign.shapeworld.recipe.tiny_preset import shapeworld_texts

    root = tmp_path_factory.mktemp("sft")
    data = root / "data"
    generate(data, n_images=40, n_videos=4, seed=3, cfg=WorldConfig(video_frames=4), progress=False)
    records = json.loads((data / "llava" / "train.json").read_text())
    text_only = []
    for rec in records[:40:4]:
        convs = [dict(t, value=t["value"].replace("<image>\n", "")) for t in rec["conversations"]]
        text_only.append({"id": rec["id"] + "-text", "conversations": convs})
    mixed = [r for r in records if "image" in r][:60] + [r for r in records if "video" in r][:12] + text_only
    (data / "mixed.json").write_text(json.dumps(mixed))
    tok = train_bpe_tokenizer(shapeworld_texts(data), vocab_size=400)
    vision = tiny_vision(
        image_size=60, patch_size=20, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    model = tiny_lmm(
        tok,
        vision,
        llm_hidden_size=48,
        llm_layers=2,
        llm_heads=4,
        llm_intermediate_size=96,
        video_frames=2,
        seed=1,
    )
    save_lmm(model, tok, root / "base")
    return root


def sft_config(base: Path, out: Path, **over) -> Path:
    fields = {
        "model": str(base / "base"),
        "out": str(out),
        "data": [{"path": str(base / "data" / "mixed.json"), "media_root": str(base / "data")}],
        "parts": {"train_vision": False, "train_projector": True, "train_llm": True},
        "optim": {"lr": 3.0e-3, "warmup_steps": 0, "schedule": "constant"},
        "strategy": {
            "zero_stage": 3,
            "micro_batch_size": 2,
            "grad_accum": 1,
            "stage3_max_live_parameters": 1000,
            "stage3_max_reuse_distance": 0,
            "stage3_param_persistence_threshold": 0,
        },
        "loss_reduction": "example",
        "max_steps": 8,
        "max_length": 160,
        "log_every": 1,
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict):
            fields[key] = {**fields[key], **value}
        else:
            fields[key] = value
    return write_sft_config(out.parent / f"{out.name}.yaml", **fields)


def state(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_lmm(path)
    return {k: v for k, v in model.state_dict().items() if not k.startswith("_video.")}


def eval_loss(path: Path, base: Path) -> float:
    model, tok = load_lmm(path)
    proc = MultimodalProcessor.for_model(model, tok)
    examples = load_llava(base / "data" / "mixed.json", media_root=base / "data")[:16]
    batch = proc.collate([proc.encode(e) for e in examples])
    with torch.no_grad():
        return float(
            model(
                batch["input_ids"],
                batch["attention_mask"],
                batch["images"],
                batch["videos"],
                batch["labels"],
                loss_reduction="example",
            )["loss"]
        )


@pytest.fixture(scope="module")
def uninterrupted(base) -> Path:
    out = base / "run_full"
    run(
        torchrun_cmd(
            SFT, ["--config", str(sft_config(base, out, max_steps=12, save_every=3, optim=SCHEDULE))]
        )
    )
    return out


def test_zero3_sft_trains_what_it_should(base, uninterrupted):
    before, after = state(base / "base"), state(uninterrupted / "final")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k in before if k.startswith(("projector.", "llm."))}
    frozen = {k for k in before if k.startswith("vision.")}
    assert trainable and frozen
    assert trainable <= changed, f"unchanged trainable tensors: {sorted(trainable - changed)[:5]}"
    assert not (frozen & changed), f"frozen tensors changed: {sorted(frozen & changed)[:5]}"
    assert eval_loss(uninterrupted / "final", base) < eval_loss(base / "base", base) - 0.5
    metrics = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert all(m["tok/s"] > 0 for m in metrics)
    # the cost the RL loop logs too (mmalign.eval.study reads it): peak memory and CPU of all ranks
    assert all(m["memory/peak_gib"] > m["memory/peak_above_start_gib"] > 0 for m in metrics)
    assert all(0 < a["cpu_s"] <= b["cpu_s"] for a, b in zip(metrics, metrics[1:], strict=False))
    lrs = [m["lr"] for m in metrics]
    assert (
        lrs[0] == pytest.approx(0.75e-3) and lrs[3] == pytest.approx(3e-3) and lrs[11] == pytest.approx(3e-4)
    )
    assert (uninterrupted / "config.yaml").exists() and any((uninterrupted / "tb").iterdir())
    # keep_last=2: older step folders were pruned; latest names the final step.
    ckpts = sorted(p.name for p in (uninterrupted / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000009", "step_000012"]
    assert (uninterrupted / "checkpoints" / "latest").read_text().strip() == "step_000012"


def test_sigkill_then_resume_gives_identical_weights(base, uninterrupted):
    out = base / "run_killed"
    cfg = sft_config(base, out, max_steps=12, save_every=3, optim=SCHEDULE)
    proc = subprocess.Popen(
        torchrun_cmd(SFT, ["--config", str(cfg)]),
        cwd=ROOT,
        env=dist_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    latest = out / "checkpoints" / "latest"
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() >= "step_000006"):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    kill_tree(proc.pid)  # SIGKILL the launcher and both ranks at once
    proc.wait()
    assert not (out / "final").exists(), "the run finished before the kill: nothing was tested"
    killed_at = latest.read_text().strip()
    resumed_from = int(killed_at.split("_")[1])
    assert resumed_from < 12, "the ranks outlived the kill and finished training: nothing was tested"
    second = run(torchrun_cmd(SFT, ["--config", str(cfg)]))  # resume=auto
    assert f"start at step {resumed_from}" in second.stdout
    # metrics.jsonl: the killed run's records up to the checkpoint, then the resumed run's, once each.
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12
    a, b = state(uninterrupted / "final"), state(out / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume from {killed_at}"


def test_gradient_accumulation_invariance(base):
    """micro-batch 1 × accumulation 4 under ZeRO-2 == micro-batch 4 × accumulation 1 under ZeRO-3.

    Adam is blind to the scale of gradients, so the scale-sensitive check is the global gradient
    norm of every step (a sum instead of a mean over micro-batches would be 4× off); the weights
    are compared too, with room for Adam amplifying float noise where second moments are tiny.
    """
    outs, norms = {}, {}
    for mb, ga, stage in ((1, 4, 2), (4, 1, 3)):
        out = base / f"run_mb{mb}_ga{ga}"
        strategy = {"micro_batch_size": mb, "grad_accum": ga, "zero_stage": stage}
        run(torchrun_cmd(SFT, ["--config", str(sft_config(base, out, max_steps=3, strategy=strategy))]))
        outs[(mb, ga)] = state(out / "final")
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        norms[(mb, ga)] = [(r["grad_norm"], r["loss"]) for r in records]
    assert len(norms[(1, 4)]) == 3
    for (n1, l1), (n2, l2) in zip(norms[(1, 4)], norms[(4, 1)], strict=True):
        assert n1 == pytest.approx(n2, rel=1e-4) and l1 == pytest.approx(l2, rel=1e-5)
    a, b = outs[(1, 4)], outs[(4, 1)]
    base_state = state(base / "base")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    assert any(not torch.equal(a[k], base_state[k]) for k in a)


def test_lora_train_export_reload_with_deepspeed_launcher(base):
    from mmalign.training.checkpoint import load_with_adapter

    out = base / "run_lora"
    cfg = sft_config(
        base,
        out,
        max_steps=4,
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
        strategy={"precision": "bf16", "gradient_checkpointing": True},
        parts={"train_projector": True, "train_llm": True},
    )
    shm_before = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    proc = run(deepspeed_cmd(SFT, ["--config", str(cfg)]))
    assert "ZeRO-3, bf16, world 2" in proc.stdout
    # DeepSpeed's CPU allreduce leaves a 66 MB /dev/shm segment per rank; the strategy removes its own.
    assert set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) <= shm_before
    merged, tok = load_lmm(out / "final")
    adapted, _ = load_with_adapter(out / "final_adapter")
    plain, _ = load_lmm(base / "base")
    proc = MultimodalProcessor.for_model(merged, tok)
    examples = load_llava(base / "data" / "mixed.json", media_root=base / "data")[:4]
    batch = proc.collate([proc.encode(e) for e in examples])
    args = (batch["input_ids"], batch["attention_mask"], batch["images"], batch["videos"])
    with torch.no_grad():
        m, a, p = merged(*args)["logits"], adapted(*args)["logits"], plain(*args)["logits"]
    torch.testing.assert_close(m, a, rtol=1e-4, atol=1e-4)
    assert (m - p).abs().max() > 1e-3  # the adapter learned something
    # Base LLM weights were frozen: the adapter state holds only LoRA tensors.
    from safetensors.torch import load_file

    adapter = load_file(str(out / "final_adapter" / "adapter_model.safetensors"))
    assert json.loads((out / "final_adapter" / "mmalign_adapter.json").read_text())["base"] == str(
        base / "base"
    )
    assert adapter and all("lora_" in k for k in adapter)


def test_user_deepspeed_json_with_cpu_offload(base):
    """configs/deepspeed/zero3_offload.json used as given ("auto" filled), DeepSpeedCPUAdam stepping;
    launched as a plain single process (`python train/sft.py`, a world of one)."""
    out = base / "run_offload"
    cfg = sft_config(
        base,
        out,
        max_steps=2,
        strategy={"deepspeed_config": str(ROOT / "configs" / "deepspeed" / "zero3_offload.json")},
    )
    proc = run([sys.executable, str(SFT), "--config", str(cfg)], timeout=600)
    assert "ZeRO-3, fp32, world 1, optimizer DeepSpeedCPUAdam, offload optimizer→cpu param→cpu" in proc.stdout
    before, after = state(base / "base"), state(out / "final")
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("projector."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision."))
    resolved = (out / "config.yaml").read_text()
    assert "zero3_offload.json" in resolved
