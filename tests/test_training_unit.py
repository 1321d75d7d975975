"""Single-process pieces of the training engine: schedules, data order, DeepSpeed JSON, logs, pruning."""

from __future__ import annotations

import json

import pytest

from mmalign.data.datasets import ExampleOrder
from mmalign.training.checkpoint import prune_checkpoints, resolve_resume
from mmalign.training.logging import MetricsLogger
from mmalign.training.parts import OptimConfig, lr_lambda
from mmalign.training.strategy import Strategy, StrategyConfig


def test_warmup_cosine_reaches_peak_once_and_min_at_the_end():
    f = lr_lambda(OptimConfig(lr=1.0, warmup_steps=3, min_lr_ratio=0.1), total_steps=12)
    values = [f(s) for s in range(12)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert values[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[3:], values[4:], strict=False))


def test_example_order_is_the_same_whatever_the_split():
    whole = ExampleOrder(10, seed=3, micro_batch_size=4, grad_accum=1, world_size=2)
    split = ExampleOrder(10, seed=3, micro_batch_size=1, grad_accum=4, world_size=2)
    for step in range(4):  # crosses epoch boundaries (8 examples per step, 10 in the data)
        a = sorted(i for r in range(2) for i in whole.micro_batch(step, 0, r))
        b = sorted(i for m in range(4) for r in range(2) for i in split.micro_batch(step, m, r))
        assert a == b
    first_epoch = [
        i for s in range(5) for r in range(2) for i in ExampleOrder(10, 3, 1, 1, 2).micro_batch(s, 0, r)
    ]
    assert sorted(first_epoch) == list(range(10))


def test_length_grouping_keeps_each_epoch_and_groups_similar_lengths():
    lengths = [(i * 37) % 100 for i in range(64)]  # 64 examples, lengths 0..99 scattered
    order = ExampleOrder(64, seed=1, micro_batch_size=4, grad_accum=1, world_size=2, lengths=lengths, group=4)
    steps = [[i for r in range(2) for i in order.micro_batch(s, 0, r)] for s in range(8)]  # one epoch
    assert sorted(i for b in steps for i in b) == list(range(64))  # every example once
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in steps]
    assert max(spans) < 40  # ungrouped batches of 8 span ~90 here
    plain = ExampleOrder(64, seed=1, micro_batch_size=4, grad_accum=1, world_size=2)
    plain_spans = [
        max(lengths[i] for i in b) - min(lengths[i] for i in b)
        for b in ([i for r in range(2) for i in plain.micro_batch(s, 0, r)] for s in range(8))
    ]
    assert sum(spans) < sum(plain_spans) / 2
    # a pure function of (seed, step): a fresh order resumed at step 5 sees the same batch
    fresh = ExampleOrder(64, seed=1, micro_batch_size=4, grad_accum=1, world_size=2, lengths=lengths, group=4)
    assert [i for r in range(2) for i in fresh.micro_batch(5, 0, r)] == steps[5]
    with pytest.raises(ValueError, match="one length per example"):
        ExampleOrder(64, 1, 4, 1, 2, lengths=[1, 2], group=4)


def test_within_step_sorting_keeps_each_step_and_sorts_its_micro_batches():
    lengths = [(i * 37) % 100 for i in range(64)]
    plain = ExampleOrder(64, seed=2, micro_batch_size=4, grad_accum=2, world_size=2)
    order = ExampleOrder(64, seed=2, micro_batch_size=4, grad_accum=2, world_size=2, lengths=lengths, group=1)
    for s in range(6):
        grouped = [order.micro_batch(s, m, r) for m in range(2) for r in range(2)]
        ungrouped = [plain.micro_batch(s, m, r) for m in range(2) for r in range(2)]
        assert sorted(i for b in grouped for i in b) == sorted(i for b in ungrouped for i in b)  # same mix
        flat = [lengths[i] for b in grouped for i in b]
        assert flat == sorted(flat)  # micro-step 0 takes the shortest half, split over the ranks
    fresh = ExampleOrder(64, seed=2, micro_batch_size=4, grad_accum=2, world_size=2, lengths=lengths, group=1)
    assert fresh.micro_batch(3, 1, 0) == order.micro_batch(3, 1, 0)
    with pytest.raises(ValueError, match="one length per example"):
        ExampleOrder(64, 1, 4, 1, 2, lengths=None, group=1)


def test_user_json_auto_filled_and_contradictions_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "bf16": {"enabled": "auto"},
                "zero_optimization": {"stage": 2},
            }
        )
    )
    ds = Strategy(
        StrategyConfig(micro_batch_size=8, grad_accum=2, precision="bf16", deepspeed_config=str(path))
    ).ds_config()
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["gradient_accumulation_steps"] == 2
    assert ds["bf16"]["enabled"] is True and ds["gradient_clipping"] == 1.0
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3}}))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=4 but the config says 8"):
        Strategy(StrategyConfig(micro_batch_size=8, deepspeed_config=str(path))).ds_config()


def test_resumed_metrics_drop_the_steps_that_will_be_redone(tmp_path):
    log = MetricsLogger(tmp_path, total_steps=6, tensorboard=False)
    for step in range(1, 6):
        log.log(step, {"loss": 1.0 / step})
    log.close()
    again = MetricsLogger(tmp_path, total_steps=6, start_step=3, tensorboard=False)
    again.log(4, {"loss": 0.2})
    again.close()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_pruning_keeps_the_newest_and_latest(tmp_path):
    for step in (3, 6, 9, 12):
        (tmp_path / f"step_{step:06d}").mkdir()
    (tmp_path / "latest").write_text("step_000003")  # e.g. an explicit resume from an old tag
    prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000003", "step_000009", "step_000012"]
    assert resolve_resume("auto", tmp_path) == (tmp_path, None)
    assert resolve_resume(str(tmp_path / "step_000009"), tmp_path) == (tmp_path, "step_000009")
    assert resolve_resume("none", tmp_path) is None
    with pytest.raises(FileNotFoundError):
        resolve_resume(str(tmp_path / "nowhere"), tmp_path)


def test_exit_after_run_runs_atexit_flushes_and_keeps_the_code():
    """The trainers' exit (no interpreter finalization): atexit handlers run, unflushed stdout is
    kept, the exit code is main's (None → 0)."""
    import subprocess
    import sys

    prog = (
        "import atexit, sys\n"
        "from mmalign.training.run import exit_after_run\n"
        "atexit.register(lambda: sys.stdout.write('atexit ran\\n'))\n"
        "sys.stdout.write('unflushed ')\n"
        "exit_after_run({code})\n"
    )
    for code, expected in (("3", 3), ("None", 0)):
        proc = subprocess.run(
            [sys.executable, "-c", prog.format(code=code)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == expected, proc.stderr
        assert proc.stdout == "unflushed atexit ran\n"
