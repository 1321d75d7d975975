"""train/isrt.py under DeepSpeed ZeRO-3 with 2 real ranks (gloo, CPU), parameters partitioned
(``stage3_max_live_parameters: 1000``, so every forward gathers collectively and a rank that skips
one hangs the other). The pool mixes clips of 8 and 16 frames and has an odd number of prompts,
so the ranks hold different numbers and the lockstep fillers run. A run SIGKILLed in the middle of
the sampling stage and re-run ends with the same samples, judgements, pairs and weights as an
uninterrupted one, with no record written twice."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mmalign.isrt.store import StageStore
from mmalign.models.checkpoint import load_lmm
from tests.distributed import ROOT, dist_env, kill_tree, run, torchrun_cmd
from tests.test_isrt import SHIPPED, make_pool

pytestmark = [pytest.mark.multiproc, pytest.mark.slow]
ISRT = ROOT / "train" / "isrt.py"
STAGES = ("samples", "contexts", "judgements", "pairs")


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    return make_pool(tmp_path_factory.mktemp("isrt_mp"), per_set=4)  # 8 prompts: 4 + 4 ... one dropped below


def args(pool: Path, out: Path, *extra: str) -> list[str]:
    lines = pool.read_text().splitlines()
    odd = pool.with_name("pool_odd.jsonl")
    odd.write_text("\n".join(lines[:7]) + "\n")  # 7 prompts over 2 ranks
    return [
        "--config", str(ROOT / "configs" / "isrt" / "tiny_shapeworld.yaml"), f"model={SHIPPED}", f"out={out}",
        f"pool.path={odd}", "pool.shapeworld=null", f"pool.media_root={pool.parent}", "pool.per_iteration=0",
        f"eval.path={odd}", "eval.shapeworld=null", f"eval.media_root={pool.parent}", "eval.max_records=4",
        "iterations=1", "temperature=2.0", "max_new_tokens=8", "context_max_new_tokens=16",
        "strategy.micro_batch_size=1", "strategy.stage3_max_live_parameters=1000",
        "strategy.stage3_max_reuse_distance=0", "strategy.stage3_param_persistence_threshold=0", "plot=false",
        *extra,
    ]  # fmt: skip


def shard_ids(directory: Path, name: str) -> list[str]:
    return [
        json.loads(x)["id"]
        for s in sorted(directory.glob(f"{name}.rank*.jsonl"))
        for x in s.read_text().splitlines()
    ]


def test_zero3_two_ranks_self_judge_mixed_clips(pool, tmp_path):
    out = tmp_path / "run"
    t0 = time.time()
    run(
        torchrun_cmd(ISRT, args(pool, out, "judge=self", "context=retrospective", "iterations=2")),
        timeout=240,
    )
    elapsed = time.time() - t0
    d = out / "iter_0"
    for name in STAGES:
        assert StageStore(d, name).is_done()
        ids = shard_ids(d, name)
        assert len(ids) == len(set(ids))  # nothing written twice
    samples = StageStore(d, "samples").read()
    assert len(samples) == 7 and {len(s["samples"]) for s in samples.values()} == {2}
    assert {Path(s["video"]).parts[0] for s in samples.values()} == {"a", "b"}  # both clip lengths
    assert len(list(d.glob("samples.rank*.jsonl"))) == 2  # both ranks sampled
    judged = StageStore(d, "judgements").read()
    assert set(judged) == {k for k, v in samples.items() if not v["dropped"]}
    assert all(v["judge"] == "self" and len(v["comparisons"][0]["prefs"]) == 2 for v in judged.values())
    assert all(v["context"] for v in judged.values())  # the self-judge saw c_0
    contexts = StageStore(out / "iter_1", "contexts").read()  # c_1 = π_1(V, c_0)
    assert contexts and all(c["source"] == "revise" and c["previous"] for c in contexts.values())
    first = StageStore(d, "contexts").read()
    assert all(c["previous"] == first[k]["context"] for k, c in contexts.items())
    rows = [json.loads(x) for x in (out / "iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [-1, 0, 1] and all("eval/accuracy" in r for r in rows)
    print(f"2-rank ZeRO-3, 2 iterations: {elapsed:.1f}s, {rows[1]['pairs']} + {rows[2]['pairs']} pairs")


def _records(d: Path) -> dict[str, dict]:
    return {name: StageStore(d, name).read() for name in STAGES}


def test_kill_in_the_middle_of_sampling_then_rerun(pool, tmp_path):
    extra = ("judge=oracle", "context=retrospective")
    clean = tmp_path / "clean"
    run(torchrun_cmd(ISRT, args(pool, clean, *extra)), timeout=240)

    out = tmp_path / "killed"
    d = out / "iter_0"
    proc = subprocess.Popen(torchrun_cmd(ISRT, args(pool, out, *extra)), cwd=ROOT, env=dist_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if len(shard_ids(d, "samples")) >= 2 if d.exists() else False:
                break
            time.sleep(0.02)
        kill_tree(proc.pid)
    finally:
        proc.wait(timeout=30)
    written = len(shard_ids(d, "samples"))
    assert not StageStore(d, "samples").is_done() and 2 <= written < 7, written  # killed mid-stage
    run(torchrun_cmd(ISRT, args(pool, out, *extra)), timeout=240)
    for name in STAGES:
        ids = shard_ids(d, name)
        assert len(ids) == len(set(ids)), name  # no duplicates
    assert _records(d) == _records(clean / "iter_0")
    pairs = StageStore(d, "pairs").read()
    assert pairs, "the oracle should decide at least one pair at temperature 2"
    a, _ = load_lmm(out / "iter_0" / "dpo" / "final")
    b, _ = load_lmm(clean / "iter_0" / "dpo" / "final")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name
    rows = [json.loads(x) for x in (out / "iterations.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [-1, 0]
    # a finished iteration re-run does nothing
    before = {p: p.stat().st_mtime for p in d.glob("*.jsonl")}
    run(torchrun_cmd(ISRT, args(pool, out, *extra)), timeout=240)
    assert before == {p: p.stat().st_mtime for p in d.glob("*.jsonl")}
    assert len((out / "iterations.jsonl").read_text().splitlines()) == 2
