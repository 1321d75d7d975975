"""Reward functions (mmalign/rl/reward_fns.py): loading, validation, skips, the ShapeWorld judge by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmalign.rl.reward_fns import call_reward_fn, caption_reward, load_reward_fn, shapeworld_judge
from mmalign.shapeworld.world import Obj, Scene

# ---------------------------------------------------------------------------------- loading

USER_FILE = """
CALLS = []

def count_words(records, responses):
    CALLS.append(len(responses))
    return [float(len(r.split())) for r in responses]

class Judge:
    @staticmethod
    def score(records, responses):
        return [1.0 for _ in responses]

NOT_CALLABLE = 3
"""


def test_load_from_module_path():
    fn = load_reward_fn("mmalign.rl.reward_fns:shapeworld_judge")
    assert fn is shapeworld_judge
    assert load_reward_fn("math:sqrt")(4.0) == 2.0


def test_load_from_file_path(tmp_path, monkeypatch):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    fn = load_reward_fn(f"{path}:count_words")
    assert fn([{}, {}], ["a b c", "d"]) == [3.0, 1.0]
    assert load_reward_fn(f"{path}:Judge.score")([{}], ["x"]) == [1.0]  # a dotted attribute
    assert load_reward_fn(f"{path}:count_words") is fn  # the file is imported once
    monkeypatch.chdir(tmp_path)
    assert load_reward_fn("my_rewards.py:count_words") is fn  # relative to the working directory


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_colon_here", "expected 'package.module:function'"),
        ("mmalign.rl.reward_fns:", "expected 'package.module:function'"),
        ("mmalign.no_such_module:f", "cannot import module 'mmalign.no_such_module'"),
        ("mmalign.rl.reward_fns:no_such_fn", "has no attribute 'no_such_fn'"),
        ("mmalign.rl.reward_fns:OnError.x", "has no attribute 'OnError.x'"),
        ("math:pi", "'pi' is a float, not callable"),
        ("missing/dir/rewards.py:f", "no such file 'missing/dir/rewards.py'"),
    ],
)
def test_load_errors_name_the_spec(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        load_reward_fn(spec)
    assert repr(spec) in str(info.value)


def test_load_errors_from_a_file(tmp_path):
    path = tmp_path / "user.py"
    path.write_text(USER_FILE)
    with pytest.raises(ValueError, match="not callable"):
        load_reward_fn(f"{path}:NOT_CALLABLE")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_package_xyz\n")
    with pytest.raises(ValueError, match="importing .* failed: ModuleNotFoundError") as info:
        load_reward_fn(f"{broken}:f")
    assert f"{broken}:f" in str(info.value)


# ---------------------------------------------------------------------------------- calling

RECORDS = [{"id": "p0"}, {"id": "p0"}, {"id": "p1"}, {"id": "p1"}]  # 2 prompts × K = 2
RESPONSES = ["a", "b", "c", "d"]


def _returning(values):
    return lambda records, responses: values


def test_call_valid_outputs():
    rewards, skipped = call_reward_fn(_returning([1, 0.5, True, -2.0]), "f", RECORDS, RESPONSES)
    assert rewards.dtype == torch.float32 and rewards.tolist() == [1.0, 0.5, 1.0, -2.0] and skipped == []
    rewards, _ = call_reward_fn(_returning(np.array([1.0, 2.0, 3.0, 4.0])), "f", RECORDS, RESPONSES)
    assert rewards.tolist() == [1.0, 2.0, 3.0, 4.0]
    rewards, _ = call_reward_fn(_returning(torch.tensor([1.0, 2.0, 3.0, 4.0])), "f", RECORDS, RESPONSES)
    assert rewards.tolist() == [1.0, 2.0, 3.0, 4.0]
    rewards, _ = call_reward_fn(_returning([np.float32(0.5), np.int64(2), 0, 1]), "f", RECORDS, RESPONSES)
    assert rewards.tolist() == [0.5, 2.0, 0.0, 1.0]  # NumPy scalars are numbers too
    rewards, skipped = call_reward_fn(_returning([]), "f", [], [])
    assert rewards.shape == (0,) and skipped == []


@pytest.mark.parametrize(
    ("values", "bad", "what"),
    [
        ([1.0, 2.0, math.nan, 4.0], 2, "nan, not a finite number"),
        ([1.0, math.inf, 3.0, math.nan], 1, "inf, not a finite number"),
        ([1.0, 2.0, 3.0, "4"], 3, "'4' of type str, not a number"),
        ([None, 2.0, 3.0, 4.0], 0, "None of type NoneType, not a number"),
        ([1.0, 1e300, 3.0, 4.0], 1, "1e+300, beyond float32's range"),
        ([1.0, 2.0, 10**400, 4.0], 2, "not a finite number"),
    ],
)
def test_call_bad_values_error_names_function_and_record(values, bad, what):
    with pytest.raises(ValueError) as info:
        call_reward_fn(_returning(values), "rewards.py:judge", RECORDS, RESPONSES)
    message = str(info.value)
    assert "'rewards.py:judge'" in message and what in message
    assert f"record {RECORDS[bad]['id']!r} (response {bad} of 4)" in message


def test_call_bad_values_skip_gets_zero_and_is_reported():
    rewards, skipped = call_reward_fn(
        _returning([1.0, math.nan, 3.0, -math.inf]), "f", RECORDS, RESPONSES, on_error="skip"
    )
    assert rewards.tolist() == [1.0, 0.0, 3.0, 0.0] and skipped == [1, 3]


def _fails_on_c(records, responses):
    """Raises when the batch holds the response "c"; otherwise one reward per response."""
    if "c" in responses:
        raise ZeroDivisionError("no reward for c")
    return [float(ord(r) - ord("a")) for r in responses]


def test_exception_is_traced_to_its_record():
    with pytest.raises(ValueError, match=r"'my:fn' failed on record 'p1' \(response 2 of 4\)") as info:
        call_reward_fn(_fails_on_c, "my:fn", RECORDS, RESPONSES)
    assert "ZeroDivisionError('no reward for c')" in str(info.value)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    rewards, skipped = call_reward_fn(_fails_on_c, "my:fn", RECORDS, RESPONSES, on_error="skip")
    assert rewards.tolist() == [0.0, 1.0, 0.0, 3.0] and skipped == [2]  # the others: single-call values


def test_wrong_length_and_wrong_type():
    with pytest.raises(ValueError, match=r"record 'p0' \(response 0 of 4\).*returned 3 values for 4"):
        call_reward_fn(_returning([1.0, 2.0, 3.0]), "f", RECORDS, RESPONSES)
    rewards, skipped = call_reward_fn(_returning([1.0, 2.0, 3.0]), "f", RECORDS, RESPONSES, on_error="skip")
    assert rewards.tolist() == [0.0] * 4 and skipped == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="returned a float, not a list of numbers"):
        call_reward_fn(_returning(1.0), "f", RECORDS, RESPONSES)
    with pytest.raises(ValueError, match=r"'#1'"):  # a record without an id is named by its index
        call_reward_fn(_returning([0.0, math.nan]), "f", [{}, {}], ["x", "y"])
    with pytest.raises(ValueError, match="2 records for 1 responses"):
        call_reward_fn(_returning([0.0]), "f", [{}, {}], ["x"])
    with pytest.raises(ValueError, match="on_error"):
        call_reward_fn(_returning([0.0]), "f", [{}], ["x"], on_error="ignore")


def test_batch_failure_with_no_single_failure_keeps_single_values():
    def only_single(records, responses):
        if len(responses) > 1:
            raise RuntimeError("batching not supported")
        return [len(responses[0])]

    rewards, skipped = call_reward_fn(only_single, "f", RECORDS[:2], ["ab", "abc"])
    assert rewards.tolist() == [2.0, 3.0] and skipped == []


# ------------------------------------------------------------------------------- ShapeWorld

# The scene of tests/test_shapeworld_rlhf.py: a large red star (top left) and a small blue square.
SCENE = Scene(
    "s0",
    [
        Obj("star", "red", "large", 0, 0, (2, 2, 18, 18)),
        Obj("square", "blue", "small", 1, 1, (25, 25, 35, 35)),
    ],
    "black",
)
EXACT = "There are 2 objects. A large red star at the top left. A small blue square in the center."


def _caption_record(**facts) -> dict:
    return {"id": "s0-rl-caption", "task": "caption", "scene_id": "s0", "images": ["images/s0.png"], **facts}


def test_caption_reward_by_hand():
    present = {"star", "square"}
    assert caption_reward(present, EXACT) == 1.0  # both recalled, nothing invented: (2 − 0)/2
    assert caption_reward(present, "A red star.") == 0.5  # (1 − 0)/2
    assert caption_reward(present, "A star, a square and a circle.") == 0.5  # (2 − 1)/2
    assert caption_reward(present, "A star and two circles. The circle is white.") == -0.5  # (1 − 2)/2
    assert caption_reward(present, "A circle, a heart, a cross and a circle.") == -1.0  # (0 − 4)/2 → clip
    assert caption_reward(present, "A star and a square, but no circle.") == 1.0  # negated: not a mention
    assert caption_reward(present, "Nothing to see.") == 0.0
    assert caption_reward(set(), "Nothing to see.") == 0.0  # empty scene: clean
    assert caption_reward(set(), "A circle.") == -1.0  # (0 − 1)/max(0, 1)


def test_shapeworld_judge_caption_from_scene_or_captions():
    responses = [EXACT, "A star, a square and a circle."]
    from_scene = [_caption_record(scene=SCENE.to_dict())] * 2
    from_captions = [_caption_record(captions=[EXACT])] * 2
    scene_object = [_caption_record(scene=SCENE, captions=["a circle"])] * 2  # scene wins over captions
    for records in (from_scene, from_captions, scene_object):
        assert shapeworld_judge(records, responses) == [1.0, 0.5]
    with pytest.raises(ValueError, match="'s0-rl-caption' has neither 'scene' nor 'captions'"):
        shapeworld_judge([_caption_record()], ["A star."])


def test_shapeworld_judge_existence_and_qa():
    asked_absent = {"id": "s0-rl-exist", "task": "existence", "answer": "no", "shape": "circle"}
    asked_present = asked_absent | {"answer": "yes", "shape": "star"}
    records = [asked_absent] * 3 + [asked_present] * 3
    responses = ["No, there is no circle.", "Yes", "maybe", "yes.", "No.", "I cannot tell."]
    assert shapeworld_judge(records, responses) == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    count = {"id": "q-count", "task": "count", "answer": "2"}
    assert shapeworld_judge([count, count], ["There are two shapes.", "3"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="'q-x' has task 'dance'"):
        shapeworld_judge([{"id": "q-x", "task": "dance"}], ["x"])
    with pytest.raises(ValueError, match="existence record 'q-y' has no 'answer'"):
        shapeworld_judge([{"id": "q-y", "task": "existence"}], ["yes"])


def test_shapeworld_judge_through_call_reward_fn():
    fn = load_reward_fn("mmalign.rl.reward_fns:shapeworld_judge")
    records = [_caption_record(captions=[EXACT])] * 2 + [{"id": "bad", "task": "caption"}] * 2
    with pytest.raises(ValueError, match="failed on record 'bad' \\(response 2 of 4\\)"):
        call_reward_fn(fn, "shapeworld_judge", records, [EXACT, "A star."] * 2)
    rewards, skipped = call_reward_fn(
        fn, "shapeworld_judge", records, [EXACT, "A star."] * 2, on_error="skip"
    )
    assert rewards.tolist() == [1.0, 0.5, 0.0, 0.0] and skipped == [2, 3]
