"""ShapeWorld dataset writer and CLI: files, LLaVA records, exact eval text, idempotency, conflicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmalign.shapeworld.__main__ import main
from mmalign.shapeworld.generate import generate
from mmalign.shapeworld.judges import parse_mentions
from mmalign.shapeworld.video import read_mp4
from mmalign.shapeworld.world import Scene, WorldConfig

ARGS = [
    *("--n-images", "20", "--n-videos", "2", "--seed", "3", "--annotation-noise", "0.5"),
    *("--prior-per-group", "3", "--no-progress"),
]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_writes_every_file_and_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sw"
    assert main(["generate", "--out", str(out), *ARGS]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["train"]["images"] == 16 and summary["counts"]["test"]["images"] == 2
    assert (
        len(list((out / "images").glob("img_*.png"))) == 20
        and len(list((out / "videos").glob("vid_*.mp4"))) == 2
    )
    clips = _jsonl(out / "prior" / "test_video.jsonl")  # video prior probes: 3 violating + 3 control clips
    assert [c["group"] for c in clips] == ["violating"] * 3 + ["control"] * 3
    assert all((out / c["video"]).is_file() and c["question"].startswith("Is there") for c in clips)
    for c in clips:
        shown = {t["shape"] for t in c["scene"]["tracks"]}
        assert c["partner"] not in shown and (c["trigger"] in shown) == (c["group"] == "violating")
    assert len(list((out / "images").glob("prior_*.png"))) == 6
    probes = _jsonl(out / "prior" / "test.jsonl")
    assert [p["group"] for p in probes] == ["violating"] * 3 + ["control"] * 3
    assert all((out / p["image"]).is_file() for p in probes)
    for split in ("train", "val", "test"):
        for sub, ext in (("scenes", "jsonl"), ("llava", "json"), ("qa", "jsonl"), ("dense", "jsonl")):
            assert (out / sub / f"{split}.{ext}").is_file()
        for kind in ("random", "popular", "adversarial"):
            probes = _jsonl(out / "pope" / f"{split}_{kind}.jsonl")
            assert probes and {"question_id", "image", "text", "label"} <= set(probes[0])
    world = json.loads((out / "world.json").read_text())
    assert (
        world["complete"]
        and world["params"]["seed"] == 3
        and world["params"]["config"]["annotation_noise"] == 0.5
    )
    assert not list(out.rglob(".*.tmp*"))

    records = json.loads((out / "llava" / "train.json").read_text())
    tasks = {r["task"] for r in records}
    assert {
        "caption",
        "short_caption",
        "existence",
        "color",
        "count",
        "video_caption",
        "video_motion",
    } <= tasks
    for r in records:
        media_key = "image" if "image" in r else "video"
        assert (out / r[media_key]).is_file()
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt" and gpt["value"]
        assert human["value"].startswith(f"<{media_key}>\n") and human["value"].count("<") == 1
    video_path = next(r["video"] for r in records if "video" in r)
    assert read_mp4(out / video_path).shape == (8, 60, 60, 3)
    scenes = _jsonl(out / "scenes" / "train.jsonl")
    assert {s["kind"] for s in scenes} == {"image", "video"}

    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert main(["generate", "--out", str(out), *ARGS]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] is True
    assert stamp == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    conflicting = [a if a != "3" else "4" for a in ARGS]
    assert main(["generate", "--out", str(out), *conflicting]) == 2
    assert "different arguments" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert main(["generate", "--out", str(tmp_path / "other"), *ARGS]) == 2


def test_training_text_is_noisy_and_eval_text_exact(tmp_path: Path) -> None:
    cfg = WorldConfig(cooccurrence={"star": ("circle", 0.0)}, annotation_noise=1.0)
    summary = generate(tmp_path, 60, 0, seed=1, cfg=cfg, val_frac=0.2, test_frac=0.2, progress=False)
    train_scenes = [Scene.from_dict(s) for s in _jsonl(tmp_path / "scenes" / "train.jsonl")]
    assert summary["n_noisy_train_scenes"] > 0 and summary["images_per_s"] > 0
    for split in ("train", "val", "test"):
        scenes = {s["id"]: Scene.from_dict(s) for s in _jsonl(tmp_path / "scenes" / f"{split}.jsonl")}
        for item in _jsonl(tmp_path / "qa" / f"{split}.jsonl"):  # QA files are exact truth in every split
            if item["type"] == "existence":
                assert (item["answer"] == "yes") == (item["shape"] in scenes[item["scene_id"]].shapes())
        captions = [
            r
            for r in json.loads((tmp_path / "llava" / f"{split}.json").read_text())
            if r["task"] == "caption"
        ]
        named = {
            r["scene_id"]: {m.shape for m in parse_mentions(r["conversations"][1]["value"])} for r in captions
        }
        extra = {sid: shapes - scenes[sid].shapes() for sid, shapes in named.items()}
        if split == "train":
            assert any(extra.values()) and all(extra[s.id] == set(s.noise_partners) for s in scenes.values())
        else:
            assert not any(extra.values()) and any(s.noise_partners for s in scenes.values())

    # The prior subset: exactly the train scenes with the trigger and without the partner.
    violating = {s.id for s in train_scenes if "star" in s.shapes() and "circle" not in s.shapes()}
    prior = json.loads((tmp_path / "llava" / "train_prior.json").read_text())
    assert violating and {r["scene_id"] for r in prior} == violating

    # The clean train records: the same scenes with the exact annotation (the control's data).
    noisy = json.loads((tmp_path / "llava" / "train.json").read_text())
    clean = json.loads((tmp_path / "llava" / "train_clean.json").read_text())
    assert [r["id"] for r in noisy] != [] and {r["scene_id"] for r in noisy} == {r["scene_id"] for r in clean}
    train = {s["id"]: Scene.from_dict(s) for s in _jsonl(tmp_path / "scenes" / "train.jsonl")}
    for r in clean:
        if r["task"] == "caption":
            named = {m.shape for m in parse_mentions(r["conversations"][1]["value"])}
            assert named == train[r["scene_id"]].shapes()


def test_prior_probes_violate_the_rule_and_controls_avoid_it() -> None:
    from mmalign.shapeworld.prior import prior_probes

    cfg = WorldConfig()
    probes = prior_probes(cfg, seed=5, n_per_group=8)
    assert len(probes) == 16
    for scene, rec in probes:
        shapes = scene.shapes()
        assert cfg.cooccurrence[rec["trigger"]][0] == rec["partner"] and rec["partner"] not in shapes
        assert (rec["trigger"] in shapes) == (rec["group"] == "violating")
        assert rec["question"] == f"Is there a {rec['partner']} in the image?" and not scene.noise_partners
    assert {rec["trigger"] for _, rec in probes} == {"star", "triangle"}  # rules taken in turn
    again = prior_probes(cfg, seed=5, n_per_group=8)
    assert [r["scene"] for _, r in again] == [r["scene"] for _, r in probes]
