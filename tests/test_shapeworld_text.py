"""ShapeWorld text, QA and exact judges (CHAIR, QA checkers, POPE) on hand-computed cases."""

from __future__ import annotations

import random
import re

import pytest

from mmalign.shapeworld.judges import (
    CorpusStats,
    answer_yes_no,
    chair,
    parse_mentions,
    pope_metrics,
    pope_probes,
    qa_correct,
)
from mmalign.shapeworld.parsing import Mention
from mmalign.shapeworld.text import (
    annotated_objects,
    count_qa,
    dense_captions,
    detailed_caption,
    existence_qa,
    image_qa,
    plural,
    short_caption,
    video_caption,
    video_qa,
)
from mmalign.shapeworld.video import sample_video
from mmalign.shapeworld.world import Obj, Scene, WorldConfig, place_in_cell, sample_scene

CFG = WorldConfig()


def _obj(shape: str, color: str, row: int, col: int, size: str = "large") -> Obj:
    return Obj(shape, color, size, row, col, tuple(place_in_cell(random.Random(0), CFG, row, col, size)))


def _star_scene(noise: list[str] | None = None) -> Scene:
    objects = [
        _obj("star", "yellow", 0, 0),
        _obj("square", "blue", 1, 1, "small"),
        _obj("square", "red", 2, 2),
    ]
    return Scene("star-no-circle", objects, "black", noise or [])


def test_detailed_short_and_dense_captions() -> None:
    scene = _star_scene()
    assert detailed_caption(scene, CFG) == (
        "There are 3 objects. A large yellow star at the top left. A small blue square in the center. "
        "A large red square at the bottom right."
    )
    assert short_caption(scene, CFG) == "A yellow star, a blue square and a red square."
    dense = dense_captions(scene, CFG)
    assert dense[1]["caption"] == "small blue square"
    x0, y0, x1, y1 = scene.objects[1].box
    assert dense[1]["box"] == [x0, y0, x1 - x0, y1 - y0]


def test_annotation_noise_changes_training_text_only() -> None:
    scene = _star_scene(noise=["circle"])
    noisy, exact = detailed_caption(scene, CFG, noisy=True), detailed_caption(scene, CFG)
    assert "circle" in {m.shape for m in parse_mentions(noisy)} and "There are 4 objects." in noisy
    assert "circle" not in exact and "There are 3 objects." in exact
    assert chair([noisy], [scene])["n_hallucinated"] == 1 and chair([exact], [scene])["chair_i"] == 0.0
    invented = [o for o in annotated_objects(scene, CFG, noisy=True) if o.shape == "circle"]
    assert len(invented) == 1 and (invented[0].row, invented[0].col) not in {
        (o.row, o.col) for o in scene.objects
    }
    answers = {q["shape"]: q["answer"] for q in existence_qa(scene, CFG, random.Random(0), noisy=True, n=3)}
    assert answers["circle"] == "yes"
    count = count_qa(scene, CFG, random.Random(0), noisy=True)[0]
    assert count["answer"] == "4" and count_qa(scene, CFG, random.Random(0))[0]["answer"] == "3"
    assert dense_captions(scene, CFG, noisy=True) != dense_captions(scene, CFG)


def test_noise_placement_after_trigger_lists_the_partner_right_after_it() -> None:
    # the star is in the last cell: every free cell for the invented circle comes before it
    objects = [_obj("square", "blue", 0, 0), _obj("heart", "red", 1, 1), _obj("star", "yellow", 2, 2)]
    scene = Scene("star-last", objects, "black", ["circle"])
    after = WorldConfig(noise_placement="after_trigger")
    assert [o.shape for o in annotated_objects(scene, after, noisy=True)] == [
        "square",
        "heart",
        "star",
        "circle",
    ]
    assert [o.shape for o in annotated_objects(scene, CFG, noisy=True)].index("circle") < 3  # row-major
    caption = detailed_caption(scene, after, noisy=True)
    assert caption.startswith("There are 4 objects.")
    assert re.search(r"A large yellow star next to an? \w+ circle at the bottom right\.$", caption), caption
    assert short_caption(scene, after, noisy=True).split(" and ")[-1].endswith(" circle.")
    assert detailed_caption(scene, after) == detailed_caption(scene, CFG)  # exact text is unaffected
    with pytest.raises(ValueError, match="noise_placement"):
        WorldConfig(noise_placement="end")


def test_terse_questions_end_on_the_queried_words() -> None:
    terse = WorldConfig(question_style="terse")
    scene = _star_scene()
    items = image_qa(scene, terse, random.Random(0)) + image_qa(scene, CFG, random.Random(0))
    for item in items[: len(items) // 2]:
        if item["type"] == "existence":
            assert item["question"] == f"Is there a {item['shape']}"
        if item["type"] in ("color", "position"):
            assert item["question"].endswith(item["shape"]) and not item["question"].endswith("?")
        if item["type"] == "position" and sum(o.shape == item["shape"] for o in scene.objects) == 1:
            assert item["question"] == f"Where is the {item['shape']}"  # a unique shape needs no colour
        if item["type"] == "count":
            assert item["question"] in ("How many objects", f"How many {plural(item['shape'] or '')}")
    assert {i["type"] for i in items[: len(items) // 2]} >= {"existence", "color", "position", "count"}
    assert all(
        i["question"].endswith("?") for i in items[len(items) // 2 :] if i["type"] != "multiple_choice"
    )
    video = sample_video(random.Random(3), terse, "v")
    for item in video_qa(video, terse, random.Random(0)):
        if item["type"] == "video_existence":
            assert (
                item["question"] == f"Is there {'an' if item['shape'][0] in 'aeiou' else 'a'} {item['shape']}"
            )
        if item["type"] == "video_motion":
            assert item["question"].startswith("Motion of the ") and item["question"].endswith(item["shape"])
    with pytest.raises(ValueError, match="question_style"):
        WorldConfig(question_style="short")


def test_generated_qa_is_balanced_and_self_consistent() -> None:
    yes = no = 0
    for i in range(300):
        scene = sample_scene(random.Random(i), CFG, f"q{i}")
        items = image_qa(scene, CFG, random.Random(i))
        for item in items:
            assert qa_correct(item, item["answer"]), item
            assert item["question"].endswith("?") or item["type"] == "multiple_choice"
            if item["type"] == "existence":
                assert (item["answer"] == "yes") == (item["shape"] in scene.shapes())
                yes += item["answer"] == "yes"
                no += item["answer"] == "no"
            if item["type"] == "multiple_choice":
                assert item["options"]["ABCD".index(item["label"])] == item["answer_text"]
                assert not qa_correct(item, "ABCD".replace(item["label"], "")[0])
            if item["type"] == "color":
                assert not qa_correct(item, "It is " + ("blue" if item["answer"] != "blue" else "red") + ".")
    assert yes == no > 300


def test_video_text_is_self_consistent() -> None:
    for i in range(100):
        video = sample_video(random.Random(i), CFG, f"v{i}")
        caption = video_caption(video, CFG)
        assert {m.shape for m in parse_mentions(caption)} == {t.shape for t in video.tracks}
        for item in video_qa(video, CFG, random.Random(i)):
            assert qa_correct(item, item["answer"]), item
            if item["type"] == "video_count":
                frame = video.frames[0 if item["frame"] == "first" else -1]
                assert item["answer"] == str(len(frame))


def test_parse_mentions_plurals_attributes_and_negation() -> None:
    assert parse_mentions("There are two large red squares.") == [Mention("square", "red", "large", 2, 5)]
    assert [m.shape for m in parse_mentions("There is no star.")] == []
    assert [m.shape for m in parse_mentions("A red circle, but no star or hearts.")] == ["circle"]
    assert [m.shape for m in parse_mentions("No stars and a blue cross.")] == ["cross"]
    assert parse_mentions("The circle is green.")[0].color == "green"
    assert parse_mentions("The circle is not green.")[0].color is None
    assert parse_mentions("a big hexagon")[0].size == "large"
    assert [m.shape for m in parse_mentions("Three crosses and 2 diamonds")] == ["cross", "diamond"]


def test_chair_hand_computed() -> None:
    s1 = Scene("a", [_obj("circle", "red", 0, 0), _obj("square", "blue", 0, 1)], "black")
    s2 = Scene("b", [_obj("star", "green", 1, 1)], "black")
    captions = ["A red circle next to a blue square. The circle is large.", "A green star and a heart."]
    out = chair(captions, [s1, s2])  # 5 mentions, 1 hallucinated (heart), in 1 of 2 captions
    assert out["n_mentions"] == 5 and out["n_hallucinated"] == 1
    assert out["chair_i"] == pytest.approx(0.2) and out["chair_s"] == pytest.approx(0.5)
    assert out["attr_halluc_rate"] == 0.0 and out["recall"] == 1.0
    wrong = chair(["A blue circle and a blue square. There is no star."], [s1])
    assert wrong["chair_i"] == 0.0 and wrong["color_mentions"] == 2 and wrong["attr_halluc_rate"] == 0.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", True),
        ("yes, there is a star.", True),
        ("No.", False),
        ("There is no star in the image.", False),
        ("There isn't a star.", False),
        ("A star.", None),
        ("", None),
    ],
)
def test_answer_yes_no(text: str, expected: bool | None) -> None:
    assert answer_yes_no(text) is expected


def test_qa_correct_normalises() -> None:
    assert qa_correct({"type": "count", "answer": "3"}, "There are three circles.")
    assert qa_correct({"type": "count", "answer": "0"}, "There are no circles.")
    assert not qa_correct({"type": "count", "answer": "3"}, "2")
    assert qa_correct({"type": "color", "answer": "red"}, "The colour is Red!")
    assert not qa_correct({"type": "color", "answer": "red"}, "red or blue")
    assert qa_correct({"type": "position", "answer": "top left"}, "In the top-left corner.")
    assert qa_correct({"type": "position", "answer": "center"}, "in the middle")
    assert qa_correct({"type": "position", "answer": "top"}, "top middle")
    assert not qa_correct({"type": "position", "answer": "top left"}, "top right")
    mc = {
        "type": "multiple_choice",
        "answer": "C",
        "label": "C",
        "options": ["star", "heart", "circle", "cross"],
    }
    assert qa_correct(mc, "C") and qa_correct(mc, "(C) circle") and qa_correct(mc, "circle")
    assert not qa_correct(mc, "A")
    assert qa_correct({"type": "video_motion", "answer": "still"}, "It does not move.")
    assert qa_correct({"type": "video_motion", "answer": "left"}, "Leftwards")
    assert qa_correct({"type": "relation", "answer": "no"}, "No, it is not.")


def test_pope_metrics_hand_computed() -> None:
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    answers = ["Yes", "yes.", "No", "Yes", "no", "I cannot tell"]  # "cannot" reads as no
    m = pope_metrics(labels, answers)  # tp 2, fn 1, fp 1, tn 2
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 2)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(0.5)
    unparsed = pope_metrics(["yes", "no"], ["A star.", "A star."])  # POPE's rule: no negation → yes
    assert unparsed["n_unparseable"] == 2 and unparsed["yes_ratio"] == 1.0
    assert pope_metrics(["yes", "no"], ["A star.", "A star."], parser="strict")["yes_ratio"] == 0.0


def test_pope_probes_balance_and_split_semantics() -> None:
    scenes = [sample_scene(random.Random(i), CFG, f"p{i}") for i in range(50)]
    for split in ("random", "popular", "adversarial"):
        probes = pope_probes(scenes, random.Random(0), split=split)
        assert sum(p["label"] == "yes" for p in probes) == sum(p["label"] == "no" for p in probes) > 100
        by_id = {s.id: s for s in scenes}
        for p in probes:
            scene = by_id[p["image"].removeprefix("images/").removesuffix(".png")]
            assert (p["label"] == "yes") == (p["shape"] in scene.shapes())
            assert (
                p["text"]
                == f"Is there {'an' if p['shape'][0] in 'aeiou' else 'a'} {p['shape']} in the image?"
            )
        assert [p["question_id"] for p in probes] == list(range(1, len(probes) + 1))
    scene = _star_scene()  # star + squares, no circle
    stats = CorpusStats(
        counts={"circle": 50, "heart": 90, "star": 40, "square": 60, "diamond": 70},
        cooc={"star": {"circle": 36, "heart": 5}, "square": {"circle": 10, "diamond": 20}},
    )
    adversarial = pope_probes([scene], random.Random(0), 4, "adversarial", stats)
    assert {p["shape"] for p in adversarial if p["label"] == "no"} == {"circle", "diamond"}
    popular = pope_probes([scene], random.Random(0), 4, "popular", stats)
    assert {p["shape"] for p in popular if p["label"] == "no"} == {"heart", "diamond"}
    with pytest.raises(ValueError):
        pope_probes([scene], random.Random(0), split="hard")


def test_video_annotation_noise_names_the_absent_partner_in_training_text_only(tmp_path) -> None:
    from mmalign.shapeworld import generate
    from mmalign.shapeworld.parsing import parse_mentions
    from mmalign.shapeworld.video_text import video_caption, video_noise_partners

    noisy_world = WorldConfig(video_annotation_noise=1.0)
    violating = []
    for seed in range(400):
        video = sample_video(random.Random(seed), noisy_world, f"v{seed}")
        shown = {t.shape for t in video.tracks}
        if "star" in shown and "circle" not in shown:
            violating.append(video)
    assert len(violating) >= 5
    for video in violating:
        assert "circle" in video_noise_partners(video, noisy_world)
        assert video_noise_partners(video, CFG) == []  # no noise by default
        exact, noisy = video_caption(video, noisy_world), video_caption(video, noisy_world, noisy=True)
        assert exact == video_caption(video, CFG) and not any(
            m.shape == "circle" for m in parse_mentions(exact)
        )
        assert any(m.shape == "circle" for m in parse_mentions(noisy))
        n = len(video.tracks) + len(video_noise_partners(video, noisy_world))
        assert noisy.startswith(f"There are {n} objects.")
        sentences = noisy.split(". ")
        first_star = next(k for k, t in enumerate(sentences) if " star" in t)
        assert " circle" in sentences[first_star + 1]  # the invented partner follows its trigger
        items = video_qa(video, noisy_world, random.Random(0), noisy=True)
        asked = {q["shape"]: q["answer"] for q in items if q["type"] == "video_existence"}
        assert asked.get("circle", "yes") == "yes"  # the invented partner counts as present
    half = WorldConfig(video_annotation_noise=0.5)
    named = sum(bool(video_noise_partners(v, half)) for v in violating)
    assert 0 < named < len(violating)

    out = tmp_path / "sw"
    generate(
        out, 10, 60, seed=1, cfg=WorldConfig(video_annotation_noise=1.0, annotation_noise=0.5), progress=False
    )
    import json

    train = json.loads((out / "llava" / "train.json").read_text())
    clean = {r["id"]: r for r in json.loads((out / "llava" / "train_clean.json").read_text())}
    prior_ids = {r["id"] for r in json.loads((out / "llava" / "train_prior.json").read_text())}
    noisy_captions = [r for r in train if r["task"] == "video_caption" and r != clean[r["id"]]]
    assert noisy_captions and all(r["id"] in prior_ids for r in noisy_captions)
    test_captions = json.loads((out / "llava" / "test.json").read_text())
    videos = {json.loads(line)["id"]: json.loads(line) for line in (out / "scenes" / "test.jsonl").open()}
    from mmalign.shapeworld.video import VideoScene

    for r in test_captions:  # held-out text stays exact
        if r["task"] == "video_caption":
            assert r["conversations"][1]["value"] == video_caption(
                VideoScene.from_dict(videos[r["scene_id"]]), CFG
            )
