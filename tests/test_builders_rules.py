"""Rule-based generators on hand-written inputs with exact expected outputs; distortion statistics."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image

from mmalign.builders.align2llava import Scored, cascade_select, meaning_preserved, ungrounded
from mmalign.builders.lrv_rules import (
    POSITIVE_TASKS,
    Instruction,
    Vocab,
    existent_element,
    knowledge,
    lrv_instructions,
    nonexistent_element,
)
from mmalign.builders.povid import distort_image, save_distorted
from mmalign.builders.povid_rules import (
    CooccurrenceStats,
    inject_attribute,
    inject_count,
    inject_object,
    inject_reasoning,
    inject_relation,
    inject_yes_no,
)
from mmalign.builders.scene import SceneDesc, Thing, scene_from_record

SCENE = SceneDesc(
    "s1",
    "images/s1.png",
    [
        Thing("circle", {"size": "large", "color": "red"}, (0, 0, 20, 20)),
        Thing("square", {"size": "small", "color": "blue"}, (40, 40, 20, 20)),
    ],
    60,
    60,
)
VOCAB = Vocab(names=("circle", "square", "star"), colors=("red", "blue", "green", "yellow"))
SHOWS = "The image shows a red circle and a blue square."


def neg(q: str, a: str, kind: str) -> Instruction:
    return Instruction(q, a, "negative", kind)


def test_nonexistent_element_every_template() -> None:
    expected = [
        "What color is the star?",
        "Where is the star in the image?",
        "Is the star to the left of the square?",
    ]
    for k, q in enumerate(expected):
        got = nonexistent_element(SCENE, random.Random(0), k, vocab=VOCAB)
        assert got == neg(q, f"There is no star in the image. {SHOWS}", "nonexistent_element")
    full = Vocab(names=("circle", "square"))
    assert nonexistent_element(SCENE, random.Random(0), vocab=full) is None  # nothing absent to ask about


def test_existent_element_corrects_the_attribute() -> None:
    one = SceneDesc("s2", None, [Thing("circle", {"color": "red"}, (0, 0, 20, 20))], 60, 60)
    two_colors = Vocab(names=("circle",), colors=("red", "green"))
    answer = "There is no green circle in the image. The circle at the top left is red, not green."
    assert existent_element(one, random.Random(0), 0, vocab=two_colors) == neg(
        "What is the green circle doing in the image?", answer, "existent_element"
    )
    assert existent_element(one, random.Random(0), 1, vocab=two_colors) == neg(
        "Describe the green circle in the image.", answer, "existent_element"
    )
    sized = SceneDesc("s3", None, [Thing("circle", {"size": "small"})])
    got = existent_element(sized, random.Random(0), 1, vocab=VOCAB)
    assert got == neg(
        "Describe the large circle in the image.",
        "There is no large circle in the image. The circle is small, not large.",
        "existent_element",
    )


def test_knowledge_manipulation() -> None:
    got = knowledge(SCENE, random.Random(0), 0, vocab=VOCAB)
    assert got == neg(
        "Why does the square in the image have six sides?",
        "A square has four sides, not six. The image shows a small blue square at the bottom right.",
        "knowledge",
    )
    assert (
        knowledge(SCENE, random.Random(0), 1, vocab=VOCAB).question
        == "The square in the image has six sides. What color is it?"
    )
    circle = SceneDesc("c", None, [Thing("circle", {"color": "red"})])
    assert knowledge(circle, random.Random(1), 0, vocab=VOCAB).answer.startswith(
        "A circle has no corners, not "
    )
    assert knowledge(SceneDesc("h", None, [Thing("heart")]), random.Random(0), vocab=VOCAB) is None


def test_positive_tasks_exact() -> None:
    got = {
        name: (
            g(SCENE, random.Random(0), vocab=VOCAB)
            if name == "multi_choice_vqa"
            else g(SCENE, random.Random(0))
        )
        for name, g in POSITIVE_TASKS.items()
    }
    assert {k: (v.question, v.answer) for k, v in got.items()} == {
        "image_captioning": ("Briefly describe the image.", "A red circle and a blue square."),
        "object_detection": (
            "Is there a square in the image?",
            "Yes, there is a small blue square at the bottom right.",
        ),
        "attribute_detection": ("What color is the square?", "The square is blue."),
        "counting": ("How many squares are there?", "There is one square."),
        "referring_expression": ("Where is the blue square?", "The blue square is at the bottom right."),
        "spatial_relation": (
            "Where is the square relative to the circle?",
            "The square is below and to the right of the circle.",
        ),
        "multi_choice_vqa": ("What color is the square? A. green B. yellow C. red D. blue", "D. blue"),
        "visual_entailment": (
            'Does the caption "A red circle and a blue square." match the image?',
            "Yes, the image shows a red circle and a blue square.",
        ),
    }
    assert all(v.task == k and v.kind is None for k, v in got.items())


def test_lrv_ratio_and_no_repeats() -> None:
    insts = lrv_instructions(SCENE, random.Random(3), 3, 3, vocab=VOCAB)
    assert sum(i.kind is None for i in insts) == 3 and sum(i.kind is not None for i in insts) == 3
    assert len({i.question for i in insts}) == 6
    assert {i.kind for i in insts if i.kind} == {"nonexistent_element", "existent_element", "knowledge"}
    assert all(len(i.answer.split()) < 30 for i in insts)


def test_scene_parsers_agree() -> None:
    sw = {
        "kind": "image",
        "id": "x",
        "image": "i.png",
        "objects": [
            {
                "shape": "circle",
                "color": "red",
                "size": "large",
                "row": 0,
                "col": 0,
                "box": [1, 2, 17, 18],
                "faint": False,
            }
        ],
    }
    dense = {"id": "x", "image": "i.png", "regions": [{"caption": "large red circle", "box": [1, 2, 16, 16]}]}
    vg = {
        "image_id": "x",
        "image": "i.png",
        "width": 60,
        "height": 60,
        "regions": [{"phrase": "large red circle", "x": 1, "y": 2, "width": 16, "height": 16}],
    }
    scenes = [scene_from_record(r, "f:1", 60) for r in (sw, dense, vg)]
    assert (
        all(s.things == scenes[0].things for s in scenes)
        and scenes[0].position(scenes[0].things[0]) == "top left"
    )
    llava = {
        "id": "y",
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe."},
            {"from": "gpt", "value": "Two blue stars and no circle."},
        ],
    }
    assert [t.describe() for t in scene_from_record(llava, "f:2").things] == ["blue star", "blue star"]


STATS = CooccurrenceStats.from_scenes(
    [
        SceneDesc("a", None, [Thing("star", {"color": "yellow"}), Thing("circle", {"color": "green"})]),
        SceneDesc("b", None, [Thing("star"), Thing("circle", {"color": "green"})]),
        SceneDesc("c", None, [Thing("star"), Thing("heart", {"color": "red"})]),
    ]
)
PRESENT = SceneDesc("p", None, [Thing("star", {"color": "red"}), Thing("square", {"color": "blue"})])
ANSWER = "There are 2 objects. A red star at the top left. A blue square below it."


def test_cooccurrence_statistics() -> None:
    assert STATS.p("circle", "star") == pytest.approx(2 / 3) and STATS.p("heart", "star") == pytest.approx(
        1 / 3
    )
    assert STATS.likely_partner({"star", "square"}) == ("star", "circle", pytest.approx(2 / 3))
    assert STATS.common_color("circle") == "green" and STATS.common_color("star", exclude="red") == "yellow"
    assert CooccurrenceStats.from_dict(STATS.to_dict()).to_dict() == STATS.to_dict()


def test_each_injection_exact() -> None:
    rng = random.Random(0)
    got = inject_object(ANSWER, PRESENT, STATS, rng)
    assert (
        got.text
        == "There are 3 objects. A red star at the top left. A blue square below it. There is also a green circle next to the star."
    )
    assert dict(got.detail) == {"added": "circle", "color": "green", "because_of": "star", "p": 0.6667}
    got = inject_attribute(ANSWER, PRESENT, STATS, rng)
    assert got.text == ANSWER.replace("red star", "yellow star") and got.detail["to"] == "yellow"
    assert inject_relation(ANSWER, PRESENT, STATS, rng).text == ANSWER.replace("top left", "bottom left")
    assert inject_relation("It is above the star.", PRESENT, STATS, rng).text == "It is below the star."
    assert inject_count("There are 2 circles.", PRESENT, STATS, rng).text == "There are 3 circles."
    assert (
        inject_count("There are 3 circles.", PRESENT, STATS, random.Random(0)).text == "There are 2 circles."
    )
    assert inject_count("There is 1 circle.", PRESENT, STATS, rng) is None
    assert inject_yes_no("Yes, there is a star.", PRESENT, STATS, rng).text == "No, there is a star."
    assert inject_yes_no("no", PRESENT, STATS, rng).text == "yes"
    got = inject_reasoning(
        "First, there are three stars on the left. So the answer is B.", PRESENT, STATS, random.Random(0)
    )
    assert got.text == "First, there are two stars on the left. So the answer is B."
    assert got.detail["step"] == 0 and got.detail["edit"] == "count"
    assert inject_reasoning(ANSWER, PRESENT, STATS, rng) is None  # no reasoning cue


def test_meaning_check_and_cascade() -> None:
    assert meaning_preserved(
        "There are 2 objects: a red circle on the left.", "On the left sits a red circle; two objects in all."
    ) == (True, "")
    ok, why = meaning_preserved("A red circle on the left.", "A blue circle on the left.")
    assert not ok and "colors changed (+['blue'] -['red'])" in why
    assert not meaning_preserved("There are 3 objects.", "There are 4 objects.")[0]
    assert not meaning_preserved("Yes.", "No.")[0] and not meaning_preserved("A star.", " ")[0]
    scored = [Scored(i, q, a) for i, (q, a) in enumerate([(5, 0), (4, 9), (3, 8), (2, 10), (1, 10), (0, 10)])]
    # top half by f_Q = indices 0, 1, 2; of those the best by g_A until 1/3 of 6 = 2 remain
    assert cascade_select(scored, keep=1 / 3, question_keep=0.5) == [1, 2]
    with pytest.raises(ValueError):
        cascade_select(scored, keep=0.6, question_keep=0.5)
    q = ungrounded(
        "Is the red circle to the left of the square?", {"circle", "square"}, ["star"], random.Random(0)
    )
    assert q == "Is the red star to the left of the square?"


def _alpha_bar(t: int) -> float:
    x = np.linspace(-6, 6, 1000)
    betas = 1 / (1 + np.exp(-x)) * (5e-3 - 1e-5) + 1e-5
    return float(np.prod(1 - betas[: t + 1]))


@pytest.mark.parametrize("t", [100, 500, 900])
def test_distortion_statistics_match_the_formula(tmp_path, t) -> None:
    x0 = 0.6
    img = Image.new("RGB", (128, 128), (153, 153, 153))  # 153/255 = 0.6
    noisy = distort_image(img, t=t, seed=1).double().numpy()
    ab = _alpha_bar(t)
    n = noisy.size
    assert noisy.shape == (3, 128, 128)
    assert abs(noisy.mean() - math.sqrt(ab) * x0) < 5 * math.sqrt(1 - ab) / math.sqrt(n)
    assert noisy.var() == pytest.approx(1 - ab, rel=0.03)
    assert np.array_equal(noisy, distort_image(img, t=t, seed=1).double().numpy())  # seeded
    img.save(tmp_path / "a.png")
    save_distorted(tmp_path / "a.png", tmp_path / "n" / "a.png", t=t, seed=1)
    stored = np.asarray(Image.open(tmp_path / "n" / "a.png"), dtype=np.float64) / 255
    expected = np.clip(noisy, 0, 1).transpose(1, 2, 0)
    assert np.abs(stored - expected).max() <= 0.5 / 255 + 1e-6
