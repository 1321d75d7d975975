"""Wordings of the questions that look one object up: terse, natural paraphrases, mixed.

The tiny ShapeWorld model was first trained on the *terse* wording, where the question ends on the
queried words (``Is there a star``) so that the answer is predicted right after them. People ask
in natural wording instead — POPE's ``Is there a star in the image?``, ``What colour is the
square?``, ``How many objects are there?`` — and a model that only knows the terse form answers
those from its priors. This module holds every wording of each lookup type:

- :func:`question_for` renders an item (its ``type`` plus the names stored in it) in one style:
  ``terse`` (one wording per type) or ``natural`` (``variant`` picks one of several paraphrases;
  variant 0 is the wording of ``question_style: natural``);
- :func:`mixed_question` draws one wording uniformly from all of them (terse and every
  paraphrase): the training wording of ``question_style: mixed``.

Items carry what the question names: ``shape`` (existence, colour, per-shape count), ``name``
(position, video motion: the shortest unambiguous name, ``circle`` or ``red circle``) and
``medium`` for existence (``image`` or ``video``, from the type).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from mmalign.shapeworld.captions import article, plural

STYLES: tuple[str, ...] = ("terse", "natural")

# Per lookup kind: the terse wording, then the natural paraphrases (index 0 = `question_style: natural`).
_TERSE: dict[str, str] = {
    "existence": "Is there {a} {shape}",
    "color": "What color is the {name}",
    "count_objects": "How many objects",
    "count_shape": "How many {plural}",
    "position": "Where is the {name}",
    "video_motion": "Motion of the {name}",
}
_NATURAL: dict[str, tuple[str, ...]] = {
    "existence": (
        "Is there {a} {shape} in the {medium}?",
        "Is there any {shape} in the {medium}?",
        "Do you see {a} {shape} in the {medium}?",
        "Does the {medium} contain {a} {shape}?",
        "Can you find {a} {shape} in this {medium}?",
    ),
    "color": (
        "What color is the {name}?",
        "What colour is the {name}?",
        "What is the color of the {name}?",
        "Which colour is the {name}?",
        "What color does the {name} have?",
    ),
    "count_objects": (
        "How many objects are there?",
        "How many objects are in the image?",
        "How many shapes are there?",
        "How many shapes can you see in the image?",
        "Count the objects in the image.",
    ),
    "count_shape": (
        "How many {plural} are there?",
        "How many {plural} are in the image?",
        "How many {plural} can you see?",
        "Count the {plural} in the image.",
    ),
    "position": (
        "Where is the {name}?",
        "Where is the {name} located?",
        "In which part of the image is the {name}?",
        "Where in the image is the {name}?",
    ),
    "video_motion": (
        "In which direction does the {name} move?",
        "How does the {name} move?",
        "Which way is the {name} moving?",
        "Where does the {name} move to?",
    ),
}
LOOKUP_TYPES: tuple[str, ...] = ("existence", "video_existence", "color", "count", "position", "video_motion")


def _kind(item: Mapping) -> str:
    t = item["type"]
    if t in ("existence", "video_existence"):
        return "existence"
    if t == "count":
        return "count_shape" if item.get("shape") else "count_objects"
    return t


def _fields(item: Mapping) -> dict[str, str]:
    t = item["type"]
    shape = item.get("shape") or ""
    if t in ("position", "video_motion") and not item.get("name"):
        raise ValueError(
            f"a {t} item needs its object's `name` to be reworded (datasets generated before the "
            f"names were stored lack it: regenerate, or ask as written): {dict(item)}"
        )
    name = item.get("name") or shape
    return {
        "shape": shape,
        "a": article(shape) if shape else "",
        "plural": plural(shape) if shape else "",
        "name": name,
        "medium": "video" if t.startswith("video") else "image",
    }


def wordings(item: Mapping) -> tuple[str, ...]:
    """Every wording of ``item``'s question: the terse one first, then the natural paraphrases.

    Raises:
        ValueError: ``item["type"]`` is not a lookup type (:data:`LOOKUP_TYPES`), or a position /
            video-motion item has no ``name``.
    """
    if item.get("type") not in LOOKUP_TYPES:
        raise ValueError(f"no wordings for QA type {item.get('type')!r}; lookup types are {LOOKUP_TYPES}")
    kind, fields = _kind(item), _fields(item)
    return tuple(t.format(**fields) for t in (_TERSE[kind], *_NATURAL[kind]))


def question_for(item: Mapping, style: str, variant: int = 0) -> str:
    """``item``'s question in ``style``: ``terse``, or ``natural`` paraphrase ``variant`` (cycled).

    Raises:
        ValueError: unknown ``style`` or a non-lookup item type.
    """
    if style not in STYLES:
        raise ValueError(f"unknown wording style {style!r}; choose from {STYLES}")
    all_ = wordings(item)
    return all_[0] if style == "terse" else all_[1 + variant % (len(all_) - 1)]


def mixed_question(item: Mapping, rng: random.Random) -> str:
    """One wording drawn uniformly from terse and every natural paraphrase (``question_style: mixed``)."""
    return rng.choice(wordings(item))
