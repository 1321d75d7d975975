"""Question wordings: terse, natural paraphrases, and the mixed training style of the tiny recipe."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from mmalign.shapeworld import WorldConfig, generate
from mmalign.shapeworld.qa import image_qa
from mmalign.shapeworld.video import sample_video
from mmalign.shapeworld.video_text import video_qa
from mmalign.shapeworld.wording import LOOKUP_TYPES, mixed_question, question_for, wordings
from mmalign.shapeworld.world import sample_scene

NATURAL, TERSE, MIXED = (WorldConfig(question_style=s) for s in ("natural", "terse", "mixed"))


def _items(cfg: WorldConfig) -> list[dict]:
    out = []
    for i in range(30):
        scene = sample_scene(random.Random(i), cfg, f"s{i}")
        out += image_qa(scene, cfg, random.Random(i))
        out += video_qa(sample_video(random.Random(i), cfg, f"v{i}"), cfg, random.Random(i))
    return [q for q in out if q["type"] in LOOKUP_TYPES]


def test_styles_render_the_world_wordings() -> None:
    terse = _items(TERSE)
    assert {q["type"] for q in terse} == set(LOOKUP_TYPES)
    for item in terse:  # terse rendering = the terse world's question, for every lookup type
        assert question_for(item, "terse") == item["question"], item
    for item in _items(NATURAL):  # natural paraphrase 0 = the natural world's question
        if item["type"] != "position":  # the natural world names positions by colour + shape
            assert question_for(item, "natural") == item["question"], item
    assert question_for({"type": "existence", "shape": "star"}, "natural") == "Is there a star in the image?"
    assert question_for({"type": "video_existence", "shape": "star"}, "natural", 1) == (
        "Is there any star in the video?"
    )
    colour = {"type": "color", "shape": "square"}
    assert [question_for(colour, "natural", k) for k in (0, 1, len(wordings(colour)) - 1)] == [
        "What color is the square?",
        "What colour is the square?",
        "What color is the square?",  # variants cycle
    ]
    assert question_for({"type": "count", "shape": None}, "terse") == "How many objects"
    assert question_for({"type": "position", "shape": "circle", "name": "red circle"}, "terse") == (
        "Where is the red circle"
    )
    with pytest.raises(ValueError, match="wording style"):
        question_for(colour, "formal")
    with pytest.raises(ValueError, match="no wordings for QA type 'relation'"):
        wordings({"type": "relation"})
    with pytest.raises(ValueError, match="needs its object's `name`"):  # an old dataset's item
        question_for({"type": "position", "shape": "square"}, "natural")


def test_mixed_draws_every_wording_and_names_the_same_object() -> None:
    items = _items(MIXED)
    assert [q["question"] for q in items] == [q["question"] for q in _items(TERSE)]  # files stay terse
    rng = random.Random(0)
    drawn = Counter()
    for item in items:
        q = mixed_question(item, rng)
        assert q in wordings(item)
        if item.get("shape"):  # names the object asked about (a per-shape count names its plural)
            assert (item.get("name") or item["shape"]).split()[-1][:4] in q
        drawn[wordings(item).index(q)] += 1
    assert set(drawn) == set(range(6)) and min(drawn.values()) > 0.1 * len(items) / 6


def test_mixed_dataset_rewords_training_records_only(tmp_path) -> None:
    for style in ("terse", "mixed"):
        cfg = WorldConfig(question_style=style, annotation_noise=0.75)
        generate(tmp_path / style, 40, 8, seed=3, cfg=cfg, progress=False)
    terse, mixed = (
        json.loads((tmp_path / s / "llava" / "train.json").read_text()) for s in ("terse", "mixed")
    )
    assert [r["id"] for r in terse] == [r["id"] for r in mixed]
    changed = 0
    for t, m in zip(terse, mixed, strict=True):
        assert t["conversations"][1] == m["conversations"][1]  # same answers
        if t["task"] not in LOOKUP_TYPES:
            assert t["conversations"][0] == m["conversations"][0]
        else:
            changed += t["conversations"][0] != m["conversations"][0]
    n_lookup = sum(r["task"] in LOOKUP_TYPES for r in terse)
    assert 0.7 * n_lookup < changed < n_lookup  # 5 of 6 wordings differ from the terse one
    for name in ("qa/test.jsonl", "prior/test.jsonl"):  # evaluation files keep the terse wording
        assert (tmp_path / "terse" / name).read_text() == (tmp_path / "mixed" / name).read_text()
    again = tmp_path / "again"
    generate(
        again, 40, 8, seed=3, cfg=WorldConfig(question_style="mixed", annotation_noise=0.75), progress=False
    )
    assert (again / "llava" / "train.json").read_text() == (
        tmp_path / "mixed" / "llava" / "train.json"
    ).read_text()
