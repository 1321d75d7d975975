"""Builder machinery: bad-record report, resume without duplicates (incl. SIGKILL mid-run), refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mmalign.builders.io import PROGRESS, CommittedOutput, read_jsonl
from mmalign.builders.lrv import LRVBuilder, LRVOptions
from mmalign.builders.povid import POVIDBuilder, POVIDOptions, mine_stats
from mmalign.builders.runner import run_builder

ROOT = Path(__file__).resolve().parents[1]


def scene(i: int) -> dict:
    objs = [
        {
            "shape": "circle",
            "color": "red",
            "size": "large",
            "row": 0,
            "col": 0,
            "box": [2, 2, 18, 18],
            "faint": False,
        },
        {
            "shape": "star",
            "color": "blue",
            "size": "small",
            "row": 2,
            "col": 2,
            "box": [45, 45, 55, 55],
            "faint": False,
        },
    ]
    return {
        "kind": "image",
        "id": f"img{i}",
        "image": f"images/img{i}.png",
        "background": "black",
        "objects": objs,
    }


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_bad_record_report_names_file_line_and_reason(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    for i in (0, 2):
        Image.new("RGB", (60, 60)).save(tmp_path / "images" / f"img{i}.png")  # the trainers' check opens it
    inp = write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps(scene(0)),
            "{not json",
            json.dumps({"id": "odd", "foo": 1}),
            json.dumps(scene(1)),  # its image is missing
            json.dumps(scene(0)),  # duplicate id
            json.dumps({"id": "badbox", "regions": [{"caption": "red circle", "box": [1, 2]}]}),
            json.dumps(scene(2)),
        ],
    )
    builder = LRVBuilder(LRVOptions(image_size=60, media_root=str(tmp_path)))
    summary = run_builder(builder, [inp], tmp_path / "out", {"t": 1}, progress=False)
    errors = read_jsonl(tmp_path / "out" / "errors.jsonl")
    where = {e["where"]: e["reason"] for e in errors}
    assert set(where) == {f"{inp}:{n}" for n in (2, 3, 4, 5, 6)}
    assert "invalid JSON" in where[f"{inp}:2"]
    assert "not a scene graph" in where[f"{inp}:3"] and "keys ['foo', 'id']" in where[f"{inp}:3"]
    assert "image not found" in where[f"{inp}:4"] and "img1.png" in where[f"{inp}:4"]
    assert "duplicate id 'img0'" in where[f"{inp}:5"]
    assert "a box must be [x, y, width, height]" in where[f"{inp}:6"]
    assert summary["processed"] == 2 and summary["errors"] == 4 and summary["duplicates"] == 1
    lrv = read_jsonl(tmp_path / "out" / "lrv.jsonl")
    assert {r["image_id"] for r in lrv} == {"img0", "img2"} and len(lrv) == 12
    assert summary["counts"]["positive"] == summary["counts"]["negative"] == 6
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_resume_skips_finished_and_truncates_uncommitted(tmp_path) -> None:
    inp = write_lines(tmp_path / "in.jsonl", [json.dumps(scene(i)) for i in range(50)])
    out = tmp_path / "out"
    builder = LRVBuilder(LRVOptions(image_size=60))
    first = run_builder(builder, [inp], out, {"t": 1}, commit_every=7, limit=20, progress=False)
    assert first["processed"] == 20
    # a torn, uncommitted tail (as a kill inside a write leaves it) is cut on the next open
    with open(out / "lrv.jsonl", "ab") as f:
        f.write(b'{"image_id": "img99", "quest')
    with open(out / PROGRESS, "ab") as f:
        f.write(b'{"ids": ["img')
    second = run_builder(builder, [inp], out, {"t": 1}, commit_every=7, progress=False)
    assert second["skipped"] == 20 and second["processed"] == 30
    recs = read_jsonl(out / "lrv.jsonl")
    full = run_builder(builder, [inp], tmp_path / "fresh", {"t": 1}, progress=False)
    assert recs == read_jsonl(tmp_path / "fresh" / "lrv.jsonl")  # identical to an uninterrupted run
    assert full["total_counts"] == second["total_counts"]
    with pytest.raises(FileExistsError, match="different arguments"):
        CommittedOutput(out, ("lrv", "llava"), {"t": 2})


def test_povid_builder_records(tmp_path) -> None:
    recs = [
        {
            "id": "a",
            "image": "i.png",
            "conversations": [
                {"from": "human", "value": "<image>\nQ?"},
                {"from": "gpt", "value": "Yes, a red star on the left."},
            ],
        },
        {"id": "b", "conversations": [{"from": "human", "value": "Q?"}]},
    ]
    inp = write_lines(tmp_path / "in.jsonl", [json.dumps(r) for r in recs])
    builder = POVIDBuilder(POVIDOptions(all_kinds=True, distort="fly"), mine_stats([inp], None))
    summary = run_builder(builder, [inp], tmp_path / "out", {}, progress=False)
    pairs = {p["id"]: p for p in read_jsonl(tmp_path / "out" / "povid.jsonl")}
    assert set(pairs) == {"a-attribute", "a-relation", "a-yes_no"}
    assert pairs["a-relation"]["rejected_conversations"][1]["value"] == "Yes, a red star on the right."
    assert pairs["a-yes_no"]["conversations"][1]["value"] == "Yes, a red star on the left."
    assert (
        pairs["a-attribute"]["injection"]["kind"] == "attribute"
        and pairs["a-attribute"]["distortion"]["t"] == 500
    )
    assert (
        summary["errors"] == 1
        and "no assistant (gpt) turn" in read_jsonl(tmp_path / "out" / "errors.jsonl")[0]["reason"]
    )
    from mmalign.preference.formats import load_preferences

    assert len(load_preferences(tmp_path / "out" / "povid.jsonl")) == 3  # the trainers' reader accepts them


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_has_no_duplicates(tmp_path) -> None:
    n = 6000
    inp = write_lines(tmp_path / "in.jsonl", [json.dumps(scene(i)) for i in range(n)])
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "data_builders" / "lrv.py"),
        str(inp),
        "--out",
        str(out),
        "--image-size",
        "60",
        "--commit-every",
        "200",
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / PROGRESS
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or log.stat().st_size < 100):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed"
    partial = len(read_jsonl(log))
    assert 0 < partial * 200 < n
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] >= partial * 200 and summary["skipped"] + summary["processed"] == n, done.stdout
    for name in ("lrv", "llava"):
        recs = read_jsonl(out / f"{name}.jsonl")  # every line parses: no torn record
        assert len(recs) == 6 * n
    ids = [r["id"] for r in read_jsonl(out / "llava.jsonl")]
    assert len(ids) == len(set(ids))
    assert {r["image_id"] for r in read_jsonl(out / "lrv.jsonl")} == {f"img{i}" for i in range(n)}
