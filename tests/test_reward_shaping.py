"""Reward shaping as LLaVA-RLHF does it (totals by hand) and the shared reward-prompt builder."""

from __future__ import annotations

import random

import pytest
import torch

from mmalign.preference.formats import PreferencePair
from mmalign.preference.reward_model import fill_reward_prompt, reward_suffix
from mmalign.rl.prompts import RLPrompt
from mmalign.rl.rewards import ShapingConfig, correctness, reward_prompt, shape_rewards

CAPTIONS = ["A dog sits by a cat.", "Two pets.", "A brown dog.", "A cat on a mat."]
TEMPLATE = (
    "Judge your last response against these captions:\n{captions}\n"
    "The correct answer is {answer}. The quality score of my last response is"
)


def make(
    kind: str = "open", answer: str | None = None, length_bonus: float = 1.0, pid: str = "q1"
) -> RLPrompt:
    return RLPrompt(
        pid,
        [{"role": "user", "content": "<image>\nQ?"}],
        [],
        [],
        CAPTIONS,
        answer,
        kind,
        length_bonus,  # type: ignore[arg-type]
    )


OPEN, OPEN_HALF = make(), make(length_bonus=0.5)
MC_B, NO, YES = make("multiple_choice", "B"), make("yes_no", "no"), make("yes_no", "yes")

# (response, prompt, rm score, length, finished, total by hand with LLaVA-RLHF's settings:
#  10 · (rm + 2·correctness − 10·len/896·length_bonus − 8·[no EOS]))
GOLDEN = [
    ("A dog on grass.", OPEN, 1.0, 112, True, 10 * (1.0 - 1.25)),  # length −10·112/896 = −1.25
    ("A dog on grass and", OPEN, 0.5, 896, False, 10 * (0.5 - 10.0 - 8.0)),  # no EOS, full budget
    ("A dog.", OPEN_HALF, 0.0, 448, True, 10 * (0.0 - 10 * 0.5 * 0.5)),  # length_bonus 0.5 halves it
    ("B. A dog.", MC_B, 0.25, 56, True, 10 * (0.25 + 2.0 - 0.625)),  # right letter
    ("I think the correct option is B. dog", MC_B, 0.0, 0, True, 10 * 2.0),  # their second pattern
    ("A. A cat.", MC_B, 0.0, 0, True, 0.0),  # wrong letter
    ("B", MC_B, 0.0, 0, True, 0.0),  # a bare letter does not count under their rule
    ("No, there is no cat.", NO, 0.0, 0, True, 10 * 2 * 0.5),  # truth no, said no
    ("Yes, there is a cat.", NO, 0.0, 0, True, -10 * 2 * 0.5),  # truth no, said yes
    ("There is no cat.", NO, 0.0, 0, True, 0.0),  # does not start with No/Yes: neither
    ("Nothing like a cat.", NO, 0.0, 0, True, 10 * 2 * 0.5),  # their prefix rule's quirk
    ("Yes, a dog.", YES, 0.0, 0, True, 0.0),  # truth yes: no symbolic reward in their code
    ("No.", YES, 0.0, 0, True, 0.0),
    ("The answer is no.", OPEN, -0.5, 0, True, -5.0),  # open: only the RM
]


def test_golden_shaping_with_llava_rlhf_settings():
    cfg = ShapingConfig.llava_rlhf()
    assert (cfg.correctness_coef, cfg.length_coef, cfg.length_max, cfg.no_eos_penalty, cfg.reward_scale) == (
        2.0,
        10.0,
        896,
        8.0,
        10.0,
    )
    texts, prompts, rm, lengths, finished, totals = map(list, zip(*GOLDEN, strict=True))
    out = shape_rewards(
        torch.tensor(rm, dtype=torch.bfloat16),
        texts,
        torch.tensor(lengths),
        torch.tensor(finished),
        prompts,
        cfg,
    )
    assert set(out) == {"rm", "correctness", "length", "no_eos", "total"}
    assert all(v.dtype == torch.float32 and v.shape == (len(GOLDEN),) for v in out.values())
    torch.testing.assert_close(out["total"], torch.tensor(totals), rtol=0, atol=1e-5)
    # each term on its own
    assert out["no_eos"].tolist() == [0.0, -8.0] + [0.0] * 12
    assert out["length"][:4].tolist() == [-1.25, -10.0, -2.5, -0.625]
    assert out["correctness"].tolist() == [0, 0, 0, 2, 2, 0, 0, 1, -1, 0, 1, 0, 0, 0]
    torch.testing.assert_close(
        out["total"], 10 * (out["rm"] + out["correctness"] + out["length"] + out["no_eos"])
    )


def test_rules_terms_defaults_and_clip():
    assert correctness("B", MC_B, ShapingConfig(mc_rule="letter")) == 1.0
    assert correctness("(B)", MC_B, ShapingConfig(mc_rule="letter")) == 1.0
    assert correctness("C", MC_B, ShapingConfig(mc_rule="letter")) == 0.0
    strict = ShapingConfig(yes_no_rule="strict", yes_no_bonus=0.25)
    assert correctness("There is no cat.", NO, strict) == 0.25
    assert correctness("Nothing like a cat.", NO, ShapingConfig(yes_no_rule="reference")) == 0.0
    assert correctness("Sure, a cat.", NO, strict) == -0.25
    assert correctness("A cat.", NO, strict) == 0.0
    # defaults switch every term off: total is the RM score
    rm = torch.tensor([0.3, -2.0])
    args = (["x", "y"], torch.tensor([10, 896]), torch.tensor([True, False]), [MC_B, NO])
    out = shape_rewards(rm, *args, ShapingConfig())
    torch.testing.assert_close(out["total"], rm)
    out = shape_rewards(rm, *args, ShapingConfig(no_eos_penalty=8.0, reward_scale=10.0, reward_clip=50.0))
    torch.testing.assert_close(out["total"], torch.tensor([3.0, -50.0]))


def test_shaping_rejects_bad_inputs():
    cfg = ShapingConfig()
    with pytest.raises(ValueError, match="finished must be a bool"):
        shape_rewards(torch.zeros(1), ["x"], torch.ones(1), torch.ones(1), [OPEN], cfg)
    with pytest.raises(ValueError, match="1 scores for 2 texts"):
        shape_rewards(torch.zeros(1), ["x", "y"], torch.ones(1), torch.ones(1, dtype=torch.bool), [OPEN], cfg)
    with pytest.raises(ValueError, match=r"must be \(S,\)"):
        shape_rewards(torch.zeros(1, 1), ["x"], torch.ones(1), torch.ones(1, dtype=torch.bool), [OPEN], cfg)
    for bad in (
        {"length_max": 0},
        {"reward_scale": 0.0},
        {"reward_clip": -1.0},
        {"no_eos_penalty": -8.0},
        {"correctness_coef": float("nan")},
        {"mc_rule": "loose"},
        {"yes_no_rule": "vibes"},
    ):
        with pytest.raises(ValueError, match="ShapingConfig"):
            ShapingConfig(**bad)  # type: ignore[arg-type]


def test_reward_prompt_exact_string_and_per_rollout_shuffle():
    p = make("multiple_choice", "B")
    first = reward_prompt(TEMPLATE, p, random.Random("42:0:q1"))
    assert first == [
        {
            "role": "user",
            "content": "Judge your last response against these captions:\n"
            "A cat on a mat.\nA dog sits by a cat.\nA brown dog.\nTwo pets.\n"
            "The correct answer is B. The quality score of my last response is",
        }
    ]
    second = reward_prompt(TEMPLATE, p, random.Random("42:1:q1"))[0]["content"]
    assert second != first[0]["content"]
    assert sorted(second.split("\n")[1:5]) == sorted(CAPTIONS)
    assert p.captions == CAPTIONS  # the prompt's own list is not shuffled in place
    with pytest.raises(ValueError, match="record q2: .*captions"):
        reward_prompt(
            TEMPLATE, RLPrompt("q2", p.prompt, [], [], None, "B", "multiple_choice"), random.Random(0)
        )
    with pytest.raises(ValueError, match="record q3: .*answer"):
        reward_prompt("{answer}", RLPrompt("q3", p.prompt, [], [], None, None, "open"), random.Random(0))
    assert fill_reward_prompt("Rate it.", "q4", None, None, random.Random(0)) == "Rate it."


def test_reward_suffix_output_unchanged_by_the_refactor():
    # strings computed with reward_suffix before fill_reward_prompt was factored out of it
    pair = PreferencePair(
        id="p7",
        prompt=[{"role": "user", "content": "<image>\nQ?"}],
        chosen="a",
        rejected="b",
        meta={"captions": ["c one", "c two", "c three", "c four"], "answer": "B"},
    )
    template = "Captions:\n{captions}\nAnswer: {answer}. Score:"
    assert reward_suffix(template, pair, 3) == [
        {"role": "user", "content": "Captions:\nc two\nc four\nc three\nc one\nAnswer: B. Score:"}
    ]
    assert (
        reward_suffix(template, pair)[0]["content"]
        == "Captions:\nc one\nc two\nc four\nc three\nAnswer: B. Score:"
    )
    gt = PreferencePair("p8", pair.prompt, "a", "b", meta={"gt_answer": "no"})
    assert reward_suffix("Answer: {answer}", gt)[0]["content"] == "Answer: no"
