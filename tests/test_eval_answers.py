"""Yes/no answer parsing (POPE's reference rule, its exact form, the strict parser) and POPE metrics."""

from __future__ import annotations

import pytest

from mmalign.eval.answers import (
    PARSERS,
    answer_yes_no,
    pope_metrics,
    read_yes_no,
    reference_exact_yes_no,
    reference_yes_no,
)

# text → (reference, reference-exact, strict); True yes, False no, None fits neither (reference
# rules then read yes). The exact column is what POPE's evaluate.py does, worked out by hand.
PHRASINGS: list[tuple[str, bool | None, bool | None, bool | None]] = [
    # the three
    ("Certainly not.", False, False, False),
    ("Indeed, there is no dog.", False, False, False),
    ("There is a dog in the image.", None, None, None),
    # plain answers
    ("Yes", True, True, True),
    ("yes", True, True, True),
    ("Yes.", True, True, True),
    ("Yes, there is a dog in the image.", True, True, True),
    ("No", False, False, False),
    ("no.", False, False, False),
    ("No, there is no dog in the image.", False, False, False),
    (" No", False, False, False),
    # negation words anywhere in the first sentence
    ("There is no dog in the image.", False, False, False),
    ("The image shows a cat, not a dog.", False, False, False),
    ("There are no dogs, but there is a cat.", False, False, False),
    ("Correct, there is no dog.", False, False, False),
    ("Absolutely not, the animal is a cat.", False, False, False),
    ("Definitely not", False, False, False),
    # capitals, punctuation and contractions: the script compares exact space-separated words
    ("Not at all.", False, None, False),
    ("NO", False, None, False),
    ("No!", False, None, False),
    ("Of course not!", False, True, False),
    ("There isn't a dog.", False, None, False),
    ("I don't see any dog.", False, None, False),
    ("I cannot see a dog.", False, None, False),
    ("No\nThere is a cat.", False, None, False),
    # affirmations
    ("Sure, there is a dog.", True, True, True),
    ("Certainly.", True, True, True),
    ("Indeed there is a dog on the sofa.", True, True, True),
    ("Absolutely, a dog is sitting on the sofa.", True, True, True),
    ("Of course.", True, True, True),
    ("True.", True, True, True),
    ("Yep", True, True, True),
    # only the first sentence counts for the reference rule; strict takes the first decisive word
    ("Yes. There is no cat, though.", True, True, True),
    ("Yes, but the dog is not brown.", False, False, True),
    ("A dog. No cat.", None, None, False),
    # neither
    ("", None, None, None),
    ("   ", None, None, None),
    ("A dog.", None, None, None),
    ("Nope.", None, None, False),
    ("There is nothing like that.", None, None, False),
    ("Nobody knows.", None, None, False),
    ("Note the dog on the left.", None, None, None),
]


@pytest.mark.parametrize(("text", "reference", "exact", "strict"), PHRASINGS)
def test_yes_no_parsers_on_many_phrasings(
    text: str, reference: bool | None, exact: bool | None, strict: bool | None
) -> None:
    assert reference_yes_no(text) is reference
    assert reference_exact_yes_no(text) is exact
    assert answer_yes_no(text) is strict
    # the reference rules read everything that fits neither as yes; strict reads it as no
    assert read_yes_no(text) == ("no" if reference is False else "yes", reference is not None)
    assert read_yes_no(text, "reference-exact") == ("no" if exact is False else "yes", exact is not None)
    assert read_yes_no(text, "strict") == ("yes" if strict else "no", strict is not None)


def _pope_script(answer: str) -> str:
    """POPE's evaluate.py, its reading of one answer (github.com/RUCAIBox/POPE), line for line."""
    text = answer
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def test_reference_exact_reads_as_pope_script_on_every_phrasing() -> None:
    for text, *_ in PHRASINGS:
        assert read_yes_no(text, "reference-exact")[0] == _pope_script(text), text
    # the default departs from the script only by reading capitals, punctuation, contractions
    departures = [t for t, *_ in PHRASINGS if read_yes_no(t)[0] != _pope_script(t)]
    assert departures == [
        "Not at all.", "NO", "No!", "Of course not!", "There isn't a dog.", "I don't see any dog.",
        "I cannot see a dog.", "No\nThere is a cat.",
    ]  # fmt: skip


def test_pope_metrics_parsers_and_unparseable_counts() -> None:
    labels = ["no", "no", "yes", "yes", "no", "yes", "no", "yes"]
    answers = [
        "Certainly not.",  # tn under every parser
        "Indeed, there is no dog.",  # tn
        "There is a dog in the image.",  # reference: tp (fits neither); strict: fn (fits neither)
        "Yes",  # tp
        "Not at all.",  # reference, strict: tn; exact: fp (fits neither)
        "No, there is no dog.",  # fn
        "",  # reference: fp (fits neither); strict: tn (fits neither)
        "Sure, there is a dog.",  # tp
    ]
    ref = pope_metrics(labels, answers)
    assert (ref["tp"], ref["fp"], ref["tn"], ref["fn"]) == (3, 1, 3, 1)
    assert ref["n_unparseable"] == 2 and ref["unparseable_share"] == pytest.approx(2 / 8)
    assert ref["accuracy"] == pytest.approx(6 / 8) and ref["precision"] == pytest.approx(3 / 4)
    assert ref["recall"] == pytest.approx(3 / 4) and ref["f1"] == pytest.approx(3 / 4)
    assert ref["yes_ratio"] == pytest.approx(4 / 8)

    exact = pope_metrics(labels, answers, parser="reference-exact")
    assert (exact["tp"], exact["fp"], exact["tn"], exact["fn"]) == (3, 2, 2, 1)
    assert exact["n_unparseable"] == 3

    strict = pope_metrics(labels, answers, parser="strict")
    assert (strict["tp"], strict["fp"], strict["tn"], strict["fn"]) == (2, 0, 4, 2)
    assert strict["n_unparseable"] == 2 and strict["yes_ratio"] == pytest.approx(2 / 8)
    strict_yes = pope_metrics(labels, answers, parser="strict", unparseable="yes")
    assert (strict_yes["tp"], strict_yes["fp"]) == (3, 1)


def test_pope_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2 labels for 1 answers"):
        pope_metrics(["yes", "no"], ["Yes"])
    with pytest.raises(ValueError, match="label 1: must be 'yes' or 'no', got 'maybe'"):
        pope_metrics(["yes", "maybe"], ["Yes", "No"])
    with pytest.raises(ValueError, match="unknown yes/no parser 'loose'"):
        pope_metrics(["yes"], ["Yes"], parser="loose")
    with pytest.raises(ValueError, match="unparseable must be 'yes' or 'no'"):
        pope_metrics(["yes"], ["Yes"], unparseable="maybe")
    assert pope_metrics([], [])["accuracy"] == 0.0


def test_bare_answers_read_the_same_everywhere() -> None:
    """ShapeWorld's judges and bars read the tiny model's bare answers; no parser may differ there."""
    from mmalign.shapeworld import answer_yes_no as sw_answer_yes_no
    from mmalign.shapeworld import pope_metrics as sw_pope_metrics
    from mmalign.shapeworld.parsing import answer_yes_no as parsing_answer_yes_no

    assert sw_answer_yes_no is answer_yes_no and parsing_answer_yes_no is answer_yes_no
    assert sw_pope_metrics is pope_metrics
    for text, expected in (("Yes", "yes"), ("No", "no"), ("yes", "yes"), ("no", "no"), ("Yes.", "yes")):
        assert {read_yes_no(text, p) for p in PARSERS} == {(expected, True)}
