"""What a run really does matches its config: precision, resume with a changed config, and the
trainers' command line (``--print-config``, ``--dry-run``, config errors).

The runs are real ``train/sft.py`` processes (a world of one, gloo, CPU) on a tiny checkpoint
saved in bf16 — the situation of a user starting from a published bf16 checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mmalign.config import ConfigError, describe_fields, load_config
from mmalign.preference.config import DPOConfig, RewardConfig
from mmalign.training.checkpoint import RESUME_SAFE_KEYS, config_changes
from mmalign.training.sft_config import SFTConfig
from mmalign.training.strategy import Strategy, StrategyConfig
from tests.distributed import ROOT, dist_env, write_sft_config

SFT = ROOT / "train" / "sft.py"


@pytest.fixture(scope="module")
def bf16_base(tmp_path_factory) -> Path:
    """A tiny LMM saved in bf16, and six LLaVA records (four with a 32 px image, two text-only)."""
    from PIL import Image

    from mmalign.data.tokenizer import train_bpe_tokenizer
    from mmalign.models.builders import tiny_lmm, tiny_vision
    from mmalign.models.checkpoint import save_lmm
    from tests.conftest import CORPUS

    root = tmp_path_factory.mktemp("bf16")
    tok = train_bpe_tokenizer(CORPUS, vocab_size=320)
    vision = tiny_vision(
        image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    model = tiny_lmm(tok, vision, llm_hidden_size=48, llm_layers=2, llm_heads=4, llm_intermediate_size=96)
    save_lmm(model.to(torch.bfloat16), tok, root / "base")
    colours = ["red", "blue", "green", "yellow"]
    records = []
    for i, colour in enumerate(colours):
        Image.new("RGB", (32, 32), colour).save(root / f"img{i}.png")
        records.append(
            {
                "id": f"img{i}",
                "image": f"img{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is the circle?"},
                    {"from": "gpt", "value": f"The circle is {colour}."},
                ],
            }
        )
    for i in range(2):
        records.append(
            {
                "id": f"text{i}",
                "conversations": [
                    {"from": "human", "value": "How many objects are there?"},
                    {"from": "gpt", "value": f"There are {i + 2} objects."},
                ],
            }
        )
    (root / "data.json").write_text(json.dumps(records))
    return root


def run_config(root: Path, out: Path, **over) -> Path:
    fields = {
        "model": str(root / "base"),
        "out": str(out),
        "data": [{"path": str(root / "data.json")}],
        "optim": {"lr": 1.0e-3, "schedule": "constant"},
        "strategy": {"zero_stage": 2, "precision": "fp32", "micro_batch_size": 2},
        "max_steps": 2,
        "save_every": 1,
        "log_every": 1,
        "max_length": 128,
    }
    for key, value in over.items():
        fields[key] = {**fields[key], **value} if isinstance(fields.get(key), dict) else value
    return write_sft_config(out.parent / f"{out.name}.yaml", **fields)


def sft(cfg: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(SFT), "--config", str(cfg), *overrides],
        cwd=ROOT,
        env=dist_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


# ----------------------------------------------------------------------------- precision (20.2, 20.4)
@pytest.mark.slow  # real train/sft.py processes
def test_fp32_run_on_a_bf16_checkpoint_trains_and_saves_fp32(bf16_base):
    out = bf16_base / "fp32"
    proc = sft(run_config(bf16_base, out))
    assert "ZeRO-2, fp32, world 1" in proc.stdout and "trainable weights float32" in proc.stdout
    for name in ("projector.safetensors", "llm/model.safetensors"):
        dtypes = {t.dtype for t in load_file(str(out / "final" / name)).values()}
        assert dtypes == {torch.float32}, f"{name}: {dtypes}"
    base = load_file(str(bf16_base / "base" / "projector.safetensors"))
    final = load_file(str(out / "final" / "projector.safetensors"))
    assert all(not torch.equal(base[k].float(), final[k]) for k in base)  # it trained


@pytest.mark.slow  # real train/sft.py processes
def test_lora_on_a_bf16_checkpoint_in_an_fp32_run_trains_with_the_runs_template(bf16_base):
    out = bf16_base / "lora_fp32"
    cfg = run_config(
        bf16_base,
        out,
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
        template="vicuna_v1",
        max_length=512,
    )
    proc = sft(cfg)
    assert "trainable weights float32" in proc.stdout
    # The run's template override travels with both exports.
    assert json.loads((out / "final" / "mmalign.json").read_text())["template"] == "vicuna_v1"
    assert json.loads((out / "final_adapter" / "mmalign_adapter.json").read_text())["template"] == "vicuna_v1"
    adapter = load_file(str(out / "final_adapter" / "adapter_model.safetensors"))
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}
    assert {t.dtype for t in load_file(str(out / "final" / "llm" / "model.safetensors")).values()} == {
        torch.float32
    }


def test_an_fp32_run_refuses_bf16_weights_before_deepspeed(tiny_model):
    """The guard behind the trainers' loading: mixed dtypes never reach DeepSpeed's bare assertion."""
    tiny_model.llm.to(torch.bfloat16)
    strategy = Strategy(StrategyConfig(precision="fp32", zero_stage=0))
    with pytest.raises(
        ValueError, match=r"precision is fp32 \(float32\) but the model's weights are bfloat16"
    ):
        strategy.prepare(tiny_model, None, None)
    Strategy(StrategyConfig(precision="bf16")).check_weights_dtype(tiny_model)  # DeepSpeed casts those


def test_assemble_states_its_dtype_default():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train" / "assemble.py"), "--help"],
        cwd=ROOT,
        env=dist_env(),
        capture_output=True,
        text=True,
    )
    assert "--dtype" in proc.stdout and "default: bf16" in " ".join(proc.stdout.split())


# ----------------------------------------------------------------------------- resume (20.3)
@pytest.mark.slow  # real train/sft.py processes
def test_resume_refuses_a_changed_config_unless_told_and_config_yaml_says_what_ran(bf16_base):
    out = bf16_base / "resume"
    first = run_config(bf16_base, out)
    sft(first)  # steps 1-2, checkpoint at step 2 with its config
    assert (out / "checkpoints" / "step_000002" / "config.yaml").exists()

    refused = sft(first, "optim.lr=5e-4", "max_steps=4", "log_every=2", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "optim.lr: 0.001 → 0.0005" in refused.stderr
    named = refused.stderr.split("the config changed")[1]
    assert "log_every" not in named and "max_steps" not in named  # harmless; applies as given
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == pytest.approx(1e-3)

    accepted = sft(first, "optim.lr=5e-4", "max_steps=4", "resume_changed_config=true")
    assert "start at step 2" in accepted.stdout
    note = "[resume] from step 2 with a changed config: max_steps: 2 → 4, optim.lr: 0.001 → 0.0005"
    assert note in accepted.stdout
    records = {json.loads(x)["step"]: json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()}
    assert records[1]["lr"] == pytest.approx(1e-3) and records[3]["lr"] == pytest.approx(5e-4)
    assert records[4]["lr"] == pytest.approx(5e-4)  # the new base lr, not the restored scheduler's
    ran = yaml.safe_load((out / "config.yaml").read_text())
    assert ran["optim"]["lr"] == pytest.approx(5e-4) and ran["max_steps"] == 4
    (entry,) = yaml.safe_load((out / "config_history.yaml").read_text())
    assert entry["resumed_at_step"] == 2
    assert entry["changed"] == {
        "max_steps": {"before": 2, "after": 4},
        "optim.lr": {"before": 1e-3, "after": 5e-4},
    }
    stored = yaml.safe_load((out / "checkpoints" / "step_000004" / "config.yaml").read_text())
    assert stored["optim"]["lr"] == pytest.approx(5e-4)


def test_config_changes_leave_out_only_the_harmless_keys():
    a = {"optim": {"lr": 1e-3, "eps": 1e-8}, "save_every": 1, "log_every": 1, "out": "x", "data": [1]}
    b = {"optim": {"lr": 2e-3, "eps": 1e-8}, "save_every": 5, "log_every": 3, "out": "y", "data": [1, 2]}
    assert config_changes(a, b) == {"data": ([1], [1, 2]), "optim.lr": (1e-3, 2e-3)}
    assert {
        "save_every",
        "log_every",
        "keep_last",
    } <= RESUME_SAFE_KEYS and "max_steps" not in RESUME_SAFE_KEYS
    assert config_changes({"max_steps": 2}, {"max_steps": 4}) == {"max_steps": (2, 4)}  # recorded


# ----------------------------------------------------------------------------- command line (20.6)
def test_unknown_key_lists_valid_keys_closest_first():
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, None, ["optim.lrr=1e-4"])
    msg = str(err.value)
    assert "did you mean optim.lr?" in msg
    listed = msg.split("(closest first): ")[1].split(".")[0].split(", ")
    assert listed[0] == "lr" and set(listed) == {
        "lr",
        "weight_decay",
        "betas",
        "eps",
        "warmup_steps",
        "min_lr_ratio",
        "schedule",
    }


def test_cli_prints_config_errors_without_traceback(bf16_base):
    proc = sft(run_config(bf16_base, bf16_base / "typo"), "max_stpes=3", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "unknown config key(s) max_stpes for SFTConfig; did you mean max_steps?" in proc.stderr


@pytest.mark.parametrize("cls", [SFTConfig, DPOConfig, RewardConfig])
def test_every_field_is_described(cls):
    rows = describe_fields(cls)
    names = [r[0] for r in rows]
    assert {"optim.lr", "strategy.precision", "template", "resume_changed_config", "data[].path"} <= set(
        names
    )
    undocumented = [r[0] for r in rows if not r[3]]
    assert not undocumented, f"fields without a meaning: {undocumented}"


def test_print_config_lists_fields_with_type_default_and_meaning():
    proc = subprocess.run(
        [sys.executable, str(SFT), "--print-config"], cwd=ROOT, env=dist_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("strategy.precision "))
    assert "Literal['fp32', 'bf16', 'fp16']" in line and "= fp32" in line and "dynamic loss scaling" in line
    assert len(proc.stdout.splitlines()) == len(describe_fields(SFTConfig)) + 1


def test_dry_run_renders_records_with_targets_marked(bf16_base, capsys):
    sys.path.insert(0, str(ROOT / "train"))
    try:
        import sft as sft_script
    finally:
        sys.path.remove(str(ROOT / "train"))
    cfg = run_config(bf16_base, bf16_base / "dry")
    assert sft_script.main(["--config", str(cfg), "--dry-run", "2"]) == 0
    text = capsys.readouterr().out
    assert "6 examples; the first 2:" in text
    assert "<image×16>" in text and "16 <image> tokens" in text
    assert "What colour is the circle?" in text
    assert "[[The circle is red.<|im_end|>\n]]" in text  # the answer is the target, the question is not
    assert "[[" not in text.split("What colour is the circle?")[0].splitlines()[-1]
    assert not (bf16_base / "dry").exists()  # no run started


def test_dpo_dry_run_marks_the_scored_tokens_of_each_response(bf16_base, capsys):
    record = {
        "id": "pair0",
        "image": "img0.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle?"},
            {"from": "gpt", "value": "The circle is red."},
        ],
        "rejected_conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle?"},
            {"from": "gpt", "value": "The circle is blue and a star."},
        ],
    }
    (bf16_base / "pairs.json").write_text(json.dumps([record]))
    sys.path.insert(0, str(ROOT / "train"))
    try:
        import dpo as dpo_script
    finally:
        sys.path.remove(str(ROOT / "train"))
    args = [f"model={bf16_base / 'base'}", f"data=[{{path: {bf16_base / 'pairs.json'}}}]", "--dry-run", "1"]
    assert dpo_script.main(args) == 0
    text = capsys.readouterr().out
    assert "1 pairs; the first 1:" in text and "<image×16>" in text and "What colour is the circle?" in text
    assert "chosen (" in text and "[[The circle is red.<|im_end|>\n]]" in text
    assert "rejected (" in text and "[[The circle is blue and a star.<|im_end|>\n]]" in text
