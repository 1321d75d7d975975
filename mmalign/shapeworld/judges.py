"""Exact judges over ShapeWorld's closed vocabulary: CHAIR, per-type QA correctness, POPE.

- :func:`chair` — CHAIR (Rohrbach et al., 2018, https://arxiv.org/abs/1809.02156) with the scene
  graph as ground truth: CHAIR-i = hallucinated shape mentions / all shape mentions (every
  occurrence counts, as in the reference script), CHAIR-s = captions with ≥ 1 hallucinated shape /
  all captions; plus attribute errors (a mentioned colour or size that no object of that *present*
  shape has) and recall of the true shapes.
- :func:`qa_correct` — the answer checker for every QA type the generators emit.
- POPE (Li et al., 2023, https://arxiv.org/abs/2305.10355) lives in :mod:`~mmalign.shapeworld.pope`
  and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from mmalign.shapeworld.parsing import (
    Mention,
    answer_yes_no,
    colors_in,
    parse_letter,
    parse_mentions,
    parse_number,
    tokenize,
)
from mmalign.shapeworld.pope import CorpusStats, compute_corpus_stats, pope_metrics, pope_probes
from mmalign.shapeworld.world import Scene

__all__ = [
    "CorpusStats",
    "Mention",
    "answer_yes_no",
    "chair",
    "compute_corpus_stats",
    "parse_mentions",
    "pope_metrics",
    "pope_probes",
    "qa_correct",
]


def chair(captions: Sequence[str], scenes: Sequence[Scene]) -> dict[str, float | int]:
    """CHAIR-i / CHAIR-s and attribute errors of captions against their scenes.

    Args:
        captions: Generated captions, one per scene.
        scenes: The true scene graphs (``scene.objects``; noise partners are not truth).

    Returns:
        ``chair_i``, ``chair_s``, ``n_captions``, ``n_captions_hallucinated``, ``n_mentions``,
        ``n_hallucinated``, ``color_mentions`` (mentions with a colour of a present shape),
        ``color_wrong``, ``attr_halluc_rate`` (= color_wrong / color_mentions), ``size_mentions``,
        ``size_wrong``, ``size_error_rate``, ``recall`` (true distinct shapes mentioned / all true
        distinct shapes). Rates with an empty denominator are 0.0.
    """
    if len(captions) != len(scenes):
        raise ValueError(f"{len(captions)} captions for {len(scenes)} scenes")
    c: dict[str, int] = dict.fromkeys(
        (
            "n_mentions",
            "n_hallucinated",
            "n_captions_hallucinated",
            "color_mentions",
            "color_wrong",
            "size_mentions",
            "size_wrong",
            "true_shapes",
            "recalled_shapes",
        ),
        0,
    )
    for caption, scene in zip(captions, scenes, strict=True):
        mentions = parse_mentions(caption)
        present = scene.shapes()
        hallucinated = [m for m in mentions if m.shape not in present]
        c["n_mentions"] += len(mentions)
        c["n_hallucinated"] += len(hallucinated)
        c["n_captions_hallucinated"] += bool(hallucinated)
        c["true_shapes"] += len(present)
        c["recalled_shapes"] += len(present & {m.shape for m in mentions})
        for m in mentions:
            if m.shape not in present:
                continue
            same = [o for o in scene.objects if o.shape == m.shape]
            if m.color is not None:
                c["color_mentions"] += 1
                c["color_wrong"] += all(o.color != m.color for o in same)
            if m.size is not None:
                c["size_mentions"] += 1
                c["size_wrong"] += all(o.size != m.size for o in same)

    def rate(num: int, den: int) -> float:
        return num / den if den else 0.0

    return {
        "chair_i": rate(c["n_hallucinated"], c["n_mentions"]),
        "chair_s": rate(c["n_captions_hallucinated"], len(captions)),
        "n_captions": len(captions),
        "n_captions_hallucinated": c["n_captions_hallucinated"],
        "n_mentions": c["n_mentions"],
        "n_hallucinated": c["n_hallucinated"],
        "color_mentions": c["color_mentions"],
        "color_wrong": c["color_wrong"],
        "attr_halluc_rate": rate(c["color_wrong"], c["color_mentions"]),
        "size_mentions": c["size_mentions"],
        "size_wrong": c["size_wrong"],
        "size_error_rate": rate(c["size_wrong"], c["size_mentions"]),
        "recall": rate(c["recalled_shapes"], c["true_shapes"]),
    }


_FILLER = frozenset("the a an at in on of to image picture it is its located side corner part area".split())
_POSITION_FORMS = {
    "centre": "center",
    "middle": "center",
    "central": "center",
    "upper": "top",
    "lower": "bottom",
}
_DIRECTIONS = {
    "left": "left",
    "leftward": "left",
    "leftwards": "left",
    "right": "right",
    "rightward": "right",
    "rightwards": "right",
    "up": "up",
    "upward": "up",
    "upwards": "up",
    "down": "down",
    "downward": "down",
    "downwards": "down",
    "still": "still",
    "stationary": "still",
    "static": "still",
    "motionless": "still",
}


def _position_set(text: str) -> frozenset[str]:
    words = {_POSITION_FORMS.get(t, t) for t in tokenize(text) if t.isalpha() and t not in _FILLER}
    if len(words) > 1:
        words.discard("center")  # "top middle" == "top"; "middle left" == "left"
    return frozenset(words)


def _directions(text: str) -> set[str]:
    tokens = tokenize(text)
    found = {_DIRECTIONS[t] for t in tokens if t in _DIRECTIONS}
    if {"not", "doesn't", "never"} & set(tokens) and {"move", "moves", "moving"} & set(tokens):
        found.add("still")
    return found


def _yes_no(item: Mapping[str, Any], text: str) -> bool:
    return answer_yes_no(text) == (str(item["answer"]).lower() == "yes")


def _count(item: Mapping[str, Any], text: str) -> bool:
    return parse_number(text) == int(item["answer"])


def _color(item: Mapping[str, Any], text: str) -> bool:
    return colors_in(text) == {item["answer"]}


def _position(item: Mapping[str, Any], text: str) -> bool:
    return _position_set(text) == _position_set(item["answer"])


def _choice(item: Mapping[str, Any], text: str) -> bool:
    return parse_letter(text, item.get("options")) == item.get("label", item["answer"])


def _shape(item: Mapping[str, Any], text: str) -> bool:
    return {m.shape for m in parse_mentions(text)} == {item["answer"]}


def _direction(item: Mapping[str, Any], text: str) -> bool:
    return _directions(text) == {item["answer"]}


CHECKERS: Mapping[str, Callable[[Mapping[str, Any], str], bool]] = MappingProxyType(
    {
        "existence": _yes_no,
        "relation": _yes_no,
        "pope": _yes_no,
        "video_existence": _yes_no,
        "video_event": _yes_no,
        "color": _color,
        "count": _count,
        "video_count": _count,
        "position": _position,
        "multiple_choice": _choice,
        "video_appear": _shape,
        "video_leave": _shape,
        "video_motion": _direction,
    }
)


def qa_correct(item: Mapping[str, Any], answer_text: str) -> bool:
    """Whether ``answer_text`` answers the QA ``item`` correctly.

    Checks by ``item["type"]``: yes/no types compare :func:`answer_yes_no`; ``color`` needs exactly
    the true colour named; counts compare the first number (digits or words); ``position`` compares
    position words after normalising (``centre``/``middle`` → center, ``upper`` → top, fillers
    dropped); ``multiple_choice`` compares the letter (or the single option named); video shape
    questions need exactly the true shape mentioned; motion needs exactly the true direction. An
    unknown type falls back to yes/no when the answer is yes/no, else to case- and
    punctuation-insensitive equality.
    """
    checker = CHECKERS.get(str(item.get("type")))
    if checker is not None:
        return checker(item, answer_text)
    truth = str(item["answer"]).strip().lower()
    if truth in ("yes", "no"):
        return _yes_no(item, answer_text)
    return [t for t in tokenize(answer_text) if t.isalnum()] == [t for t in tokenize(truth) if t.isalnum()]
