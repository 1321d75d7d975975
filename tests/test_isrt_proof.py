"""The i-SRT proof's parts: the video description judge, the label-free pool and the format
records, the control's data, the targets on hand-made numbers, and (slow) the proof end to end at
smoke size."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mmalign.eval.isrt_proof import control_records, dpo_budget, judge_targets
from mmalign.eval.video_hallucination import claimed_motion, description_errors
from mmalign.isrt.config import ISRTConfig
from mmalign.shapeworld import WorldConfig, generate
from mmalign.shapeworld.recipe.isrt_data import corrupt_description, format_records, load_clips, pool_records
from mmalign.shapeworld.video import sample_video
from mmalign.shapeworld.video_text import video_caption, video_noise_partners

ROOT = Path(__file__).resolve().parent.parent
WORLD = json.loads((ROOT / "configs" / "shapeworld" / "world.json").read_text())


def _clip_with(shapes: int):
    cfg = WorldConfig()
    for seed in range(500):
        clip = sample_video(random.Random(seed), cfg, f"v{seed}")
        if len({t.shape for t in clip.tracks}) == shapes == len(clip.tracks):
            return clip
    raise AssertionError("no clip found")


def test_claimed_motion_reads_the_motion_not_the_entry_side():
    assert claimed_motion("A small star enters from the left and moves right.") == "right"
    assert claimed_motion("A large red circle at the top left moves up.") == "up"
    assert claimed_motion("A cross at the bottom stays still.") == "still"
    assert claimed_motion("A cross at the top left.") is None
    assert claimed_motion("The circle is moving down.") == "down"
    assert claimed_motion("The heart does not move.") == "still"


def test_description_errors_on_hand_written_descriptions():
    clip = _clip_with(2)
    (a, b) = clip.tracks
    other = next(s for s in WorldConfig().shapes if s not in {a.shape, b.shape})
    wrong = next(d for d in ("left", "right", "up", "down") if d != a.direction)
    exact = video_caption(clip, WorldConfig())
    assert description_errors([exact], [clip]) == {
        "chair_i": 0.0, "chair_s": 0.0, "wrong_motion": 0.0, "precision": 1.0, "recall": 1.0,
        "words": float(len(exact.split())), "n": 1, "mentions": 2, "motion_claims": 2,
    }  # fmt: skip
    text = f"There are 3 objects. A {a.shape} moves {wrong}. A {other} stays still."
    got = description_errors([text], [clip])
    assert got["chair_i"] == pytest.approx(1 / 2) and got["chair_s"] == 1.0
    assert got["motion_claims"] == 1 and got["wrong_motion"] == 1.0  # the absent shape's is no claim
    assert got["precision"] == pytest.approx(1 / 2) and got["recall"] == pytest.approx(1 / 2)
    assert math.isnan(description_errors(["Nothing here."], [clip])["wrong_motion"])
    with pytest.raises(ValueError):
        description_errors([text, text], [clip])


@pytest.fixture(scope="module")
def noisy_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("isrt_proof") / "sw"
    cfg = WorldConfig.from_dict({**WORLD, "video_annotation_noise": 1.0})
    generate(out, 12, 40, seed=5, cfg=cfg, prior_per_group=4, progress=False)
    return out


def test_pool_truth_is_the_scene_and_annotation_the_noisy_label(noisy_data):
    cfg = WorldConfig.from_dict({**WORLD, "video_annotation_noise": 1.0})
    clips = load_clips(noisy_data, "train")
    pool = pool_records(noisy_data, "train", seed=0)
    assert pool == pool_records(noisy_data, "train", seed=0)  # deterministic
    exist = [r for r in pool if r["truth"]["type"] == "video_existence"]
    assert len(exist) == len(clips) * len(cfg.shapes)
    noisy = 0
    for r in exist:
        clip = clips[r["scene_id"]]
        shape = r["truth"]["shape"]
        assert r["truth"]["answer"] == ("yes" if shape in {t.shape for t in clip.tracks} else "no")
        invented = shape in video_noise_partners(clip, cfg)
        noisy += invented
        assert (r["annotation"] != r["truth"]["answer"]) == invented
        assert shape in r["question"]
    assert noisy > 0  # the pool's annotations carry the video noise
    motion = [r for r in pool if r["truth"]["type"] == "video_motion"]
    assert motion and all(r["annotation"] == r["truth"]["answer"] for r in motion)


def test_format_records_teach_the_annotated_answer_and_description(noisy_data):
    from mmalign.data.check import check_record

    isrt = ISRTConfig(pool={"shapeworld": str(noisy_data)})
    records, summary = format_records(noisy_data, isrt, n_judge=60, n_revise=20, seed=1)
    train = [r for r in json.loads((noisy_data / "llava" / "train.json").read_text()) if "video" in r]
    answers = {r["id"]: r["conversations"][1]["value"] for r in train}
    captions = {r["scene_id"]: r["conversations"][1]["value"] for r in train if r["task"] == "video_caption"}
    judged = [r for r in records if r["task"] == "isrt_judge"]
    revised = [r for r in records if r["task"] == "isrt_revise"]
    assert len(judged) == summary["judge_A"] + summary["judge_B"] > 40 and len(revised) == 20
    assert summary["judge_A"] > 0 and summary["judge_B"] > 0
    for r in judged:
        prompt, letter = r["conversations"][0]["value"], r["conversations"][1]["value"]
        right = answers[r["id"].removesuffix("-judge")]
        assert f"Answer {letter}: {right}\n" in prompt
        assert "Reply with one letter, A or B." in prompt
        assert check_record(r, "llava", r["id"], noisy_data) is None
    assert any("Description of the video:" in r["conversations"][0]["value"] for r in judged)
    assert any("Description of the video:" not in r["conversations"][0]["value"] for r in judged)
    for r in revised:
        assert r["conversations"][1]["value"] == captions[r["scene_id"]]
        assert "Here is your previous description" in r["conversations"][0]["value"]
        assert check_record(r, "llava", r["id"], noisy_data) is None


def test_corrupt_description_changes_one_thing():
    text = "There are 2 objects. A large red circle at the top left moves right. A small star stays still."
    shapes = WorldConfig().shapes
    kinds = set()
    for seed in range(40):
        got, how = corrupt_description(text, shapes, random.Random(seed))
        kinds.add(how)
        if how == "same":
            assert got == text
        elif how == "drop":
            assert got.startswith("There are 2 objects.") and len(got) < len(text)
        else:
            assert got != text and len(got.split()) == len(text.split())
        if how == "direction":
            assert "moves right" not in got  # the motion changed, not a position word
    entering = "There is 1 object. A small star enters from the left and moves right."
    for seed in range(40):
        got, how = corrupt_description(entering, shapes, random.Random(seed))
        if how == "direction":
            assert got.startswith("There is 1 object. A small star enters from the left and moves ")
    assert kinds == {"same", "drop", "shape", "direction"}


def fake_run(root: Path, pairs_per_iteration: list[list[str]], start: Path | None = None) -> Path:
    """A run folder as ``train/isrt.py`` leaves it: per iteration the pairs store and ``dpo.done``
    (2 steps per pair); with ``start`` also each iterate's ``dpo/final`` (an iteration without pairs
    keeps the previous model), ``isrt_config.yaml`` and ``done.json``."""
    run, model = root / "isrt-retrospective", start
    for t, ids in enumerate(pairs_per_iteration):
        d = run / f"iter_{t}"
        d.mkdir(parents=True)
        rows = [{"id": i, "prompt": f"question of {i}", "chosen": "no", "rejected": "yes"} for i in ids]
        (d / "pairs.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "pairs.done").write_text("{}")
        if start is not None and ids:
            model = d / "dpo" / "final"
            model.mkdir(parents=True)
            (model / "mmalign.json").write_text("{}")
        done = {"model": str(model or "m"), "pairs": len(ids), **({"steps": 2 * len(ids)} if ids else {})}
        (d / "dpo.done").write_text(json.dumps(done))
    if start is not None:
        (run / "isrt_config.yaml").write_text(json.dumps({"model": str(start), "optim": {"warmup_steps": 2}}))
        (run / "done.json").write_text(json.dumps({"iterations": len(pairs_per_iteration)}))
    return run


def fake_pool(path: Path) -> Path:
    """Four pool records p0..p3 (existence, truth "no"; annotation "yes" for the odd ones)."""
    recs = [
        {"id": f"p{k}", "video": f"videos/v{k}.mp4", "question": f"question of p{k}", "scene_id": f"v{k}",
         "truth": {"type": "video_existence", "answer": "no"}, "annotation": "yes" if k % 2 else "no"}
        for k in range(4)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_control_gets_the_pairs_prompts_with_their_annotations(tmp_path):
    pool = fake_pool(tmp_path / "pool.jsonl")
    run = fake_run(tmp_path, [["p1", "p2"], ["p1"]])
    control = control_records(run, pool, 2)
    assert [(r["id"], r["conversations"][1]["value"]) for r in control] == [
        ("p1-t0", "yes"),
        ("p2-t0", "no"),
        ("p1-t1", "yes"),
    ]
    assert control[0]["conversations"][0]["value"] == "<video>\nquestion of p1"
    assert dpo_budget(run, 2) == {"steps": 6, "pairs": 3}
    with pytest.raises(FileNotFoundError):
        control_records(run, pool, 3)


def test_targets_on_hand_made_numbers():
    rows = {
        # pooled: retrospective (0.8·1 + 0.7·3)/4 = 0.725 decided, margin 0.45; none 0.6 and 0.4
        "retrospective": [
            {"agreement": 0.8, "decided": 1, "margin_agreement": 0.3, "margin_pairs": 1},
            {"agreement": 0.7, "decided": 3, "margin_agreement": 0.5, "margin_pairs": 3},
        ],
        "none": [
            {"agreement": 0.6, "decided": 2, "margin_agreement": 0.4, "margin_pairs": 4},
            {"agreement": math.nan, "decided": 0},
        ],
    }
    base = {"prior/yes": 0.8, "prior/mention": 0.2, "desc/chair_i": 0.10, "desc/wrong_motion": 0.05,
            "qa/accuracy": 0.90, "qa/answer_words": 1.2}  # fmt: skip
    last = {"prior/yes": 0.3, "prior/mention": 0.15, "desc/chair_i": 0.05, "desc/wrong_motion": 0.0,
            "qa/accuracy": 0.885, "qa/answer_words": 1.0}  # fmt: skip
    got = judge_targets(rows, {"sft": base, "start": base, "retro t3": last}, "retro t3")
    assert got["agreement (decided pairs): retrospective > none and > 0.5"]["value"] == "0.725 vs 0.600"
    assert got["agreement (decided pairs): retrospective > none and > 0.5"]["met"] is True
    margin = got["agreement (mean margin, every pair): retrospective > none and > 0.5"]
    assert margin["value"] == "0.450 vs 0.400" and margin["met"] is False  # above none, below chance
    assert got["prior/yes falls >= 50%"]["met"] is True  # 62 %
    assert got["prior/mention falls >= 50%"]["met"] is False  # 25 %
    assert got["desc/chair_i falls >= 50%"]["met"] is True  # exactly 50 %
    assert got["video QA accuracy -1 point at worst"]["met"] is False  # 1.5 points
    assert got["answers no longer than SFT's"]["met"] is True
    worse = judge_targets(
        {"retrospective": rows["none"], "none": rows["retrospective"]},
        {"sft": base, "start": base, "retro t3": base},
        "retro t3",
    )
    assert worse["agreement (decided pairs): retrospective > none and > 0.5"]["met"] is False
    unmeasured = judge_targets(
        {"retrospective": [], "none": []}, {"sft": base, "start": base, "retro t3": base}, "retro t3"
    )
    assert unmeasured["agreement (decided pairs): retrospective > none and > 0.5"]["met"] is None
    assert worse["prior/yes falls >= 50%"]["met"] is False


@pytest.mark.slow
def test_proof_runs_end_to_end_at_smoke_size(noisy_data, tmp_path):
    """Data, the format continuation, i-SRT (2 ranks, ZeRO-3: the retrospective run and the oracle
    run), both controls and the held-out measurement, at smoke size; the report has every part."""
    out = tmp_path / "proof"
    cmd = [
        sys.executable,
        str(ROOT / "eval" / "isrt_proof.py"),
        "--data",
        str(noisy_data),
        "--out",
        str(out),
        "--smoke",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "report.md").read_text()
    for part in (
        "### retrospective",
        "### oracle",
        "## Held-out clips",
        "## Targets",
        "control (oracle)",
    ):
        assert part in report
    results = json.loads((out / "results.json").read_text())
    assert set(results["measured"]) == {
        "sft",
        "start",
        "retro t1",
        "oracle t1",
        "control (retrospective)",
        "control (oracle)",
    }
    for m in results["measured"].values():
        test_clips = sum(
            '"video"' in x for x in (noisy_data / "scenes" / "test.jsonl").read_text().splitlines()
        )
        assert 0.0 <= m["qa/accuracy"] <= 1.0 and m["n"]["clips"] == min(8, test_clips) > 0
    assert results["control_budgets"]["oracle"]["steps"] > 0  # the oracle decides: pairs, DPO steps
    assert (out / "iterations.png").stat().st_size > 0
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)  # resumes: all cached
    assert again.returncode == 0
    reran = [x for x in again.stdout.splitlines() if x.startswith(("$ ", "measured "))]
    assert not reran  # no command launched, no checkpoint measured again


def test_margin_agreement_reads_a_biased_judges_content_preference():
    from mmalign.isrt.stages import judge_stats

    def row(prefs, correct, tie=True):
        margin = (prefs[0] + prefs[1]) / 2
        comparison = {"i": 0, "j": 1, "prefs": prefs, "margin": margin}
        chosen = None if tie else (0 if margin > 0 else 1)
        return {
            "tie": tie, "reason": "order_disagree" if tie else None, "comparisons": [comparison],
            "chosen": chosen, "rejected": None if tie else 1 - chosen,
            "oracle": {"correct": correct, "preferred": correct.index(True) if any(correct) and not all(correct) else None},
        }  # fmt: skip

    rows = [
        row([1.3, -1.1], [True, False]),  # letter bias (A in both orders), content favours 0: right
        row([1.2, -1.3], [True, False]),  # content favours 1: wrong
        row([-1.3, 1.1], [False, True]),  # favours 1 (right)
        row([0.5, 0.4], [False, True], tie=False),  # decided for 0: wrong
        row([0.5, 0.4], [True, True]),  # not decisive: left out
    ]
    got = judge_stats(rows)
    assert got["margin_pairs"] == 4 and got["margin_agreement"] == pytest.approx(2 / 4)
    assert got["oracle_agreement"] == 0.0 and got["judge_decided_on_decisive"] == 1 and got["ties_order"] == 4


def test_iteration_rows_read_the_run_and_judge_its_contexts(noisy_data, tmp_path):
    from mmalign.eval.isrt_proof import iteration_rows

    clips = load_clips(noisy_data, "train")
    cfg = WorldConfig.from_dict({**WORLD, "video_annotation_noise": 1.0})
    run = tmp_path / "isrt-retrospective"
    (run / "iter_0").mkdir(parents=True)
    keys = sorted(clips)[:3]
    contexts = [{"id": f"videos/{k}.mp4", "context": video_caption(clips[k], cfg)} for k in keys]
    contexts[0]["context"] += (
        " A small red heart stays still." if "heart" not in contexts[0]["context"] else ""
    )
    (run / "iter_0" / "contexts.rank0.jsonl").write_text("".join(json.dumps(c) + "\n" for c in contexts))
    rows = [
        {"iteration": -1},
        {"iteration": 0, "judge/margin_agreement": 0.4, "judge/margin_pairs": 5, "pairs": 2},
    ]
    (run / "iterations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (got,) = iteration_rows(run, noisy_data)
    assert got["iteration"] == 0 and got["margin_agreement"] == 0.4 and got["pairs"] == 2
    assert math.isnan(got["agreement"]) and got["context_recall"] == 1.0
    heart_added = "heart" not in {t.shape for t in clips[keys[0]].tracks}
    assert (got["context_precision"] < 1.0) == heart_added
    assert iteration_rows(tmp_path / "missing", noisy_data) == []
