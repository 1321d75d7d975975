"""Question–answer items from image scene graphs.

Every generator has the signature ``(scene, cfg, rng, noisy=False) -> list[dict]`` and returns
items ``{"type", "question", "answer", ...}`` whose extra keys say what was asked (``shape``,
``color``, ``relation``, ``options``/``label`` …). The queried word comes last where natural
("What color is the circle?"). With ``noisy=True`` answers follow the noisy annotation (noise
partners count as present); evaluation must use ``noisy=False``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from mmalign.shapeworld.captions import annotated_objects, article, describe, plural, position_words
from mmalign.shapeworld.world import RELATIONS, Obj, Scene, WorldConfig, relation_holds

QA = dict
RELATION_PHRASES = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
    "next to": "next to",
}
LETTERS = "ABCD"
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


def unique_descriptor(obj: Obj, objects: Sequence[Obj]) -> str | None:
    """Shortest unambiguous name: ``circle`` if the shape is unique, else ``red circle``, else None."""
    if sum(o.shape == obj.shape for o in objects) == 1:
        return obj.shape
    if sum(o.shape == obj.shape and o.color == obj.color for o in objects) == 1:
        return describe(obj, size=False)
    return None


def _terse(cfg: WorldConfig) -> bool:
    """Terse wording (``terse``; ``mixed`` too: its training records are reworded by the generator)."""
    return cfg.question_style != "natural"


def lookup_question(text: str, cfg: WorldConfig) -> str:
    """A question that ends on the looked-up words: ``?`` added unless ``cfg.question_style`` is terse."""
    return text if _terse(cfg) else text + "?"


def existence_question(shape: str, medium: str, cfg: WorldConfig) -> str:
    """``Is there a star in the image?`` (natural) or ``Is there a star`` (terse)."""
    art = article(shape)
    if _terse(cfg):
        return f"Is there {art} {shape}"
    return f"Is there {art} {shape} in the {medium}?"


def existence_qa(
    scene: Scene, cfg: WorldConfig, rng: random.Random, noisy: bool = False, n: int = 2
) -> list[QA]:
    """Balanced yes/no existence questions: ``k`` present and ``k`` absent shapes, ``k ≤ n``."""
    present = sorted({o.shape for o in annotated_objects(scene, cfg, noisy)}, key=cfg.shapes.index)
    absent = [s for s in cfg.shapes if s not in present]
    k = min(n, len(present), len(absent))
    picks = [(s, "yes") for s in rng.sample(present, k)] + [(s, "no") for s in rng.sample(absent, k)]
    rng.shuffle(picks)
    return [
        {
            "type": "existence",
            "question": existence_question(s, "image", cfg),
            "answer": a,
            "shape": s,
        }
        for s, a in picks
    ]


def color_qa(scene: Scene, cfg: WorldConfig, rng: random.Random, noisy: bool = False, n: int = 2) -> list[QA]:
    """``What color is the circle?`` for shapes that occur exactly once."""
    objects = annotated_objects(scene, cfg, noisy)
    counts = Counter(o.shape for o in objects)
    unique = [o for o in objects if counts[o.shape] == 1]
    return [
        {
            "type": "color",
            "question": lookup_question(f"What color is the {o.shape}", cfg),
            "answer": o.color,
            "shape": o.shape,
        }
        for o in rng.sample(unique, min(n, len(unique)))
    ]


def count_qa(scene: Scene, cfg: WorldConfig, rng: random.Random, noisy: bool = False) -> list[QA]:
    """``How many objects are there?`` and one ``How many circles are there?`` (present or absent shape).

    Terse style: ``How many objects`` / ``How many circles`` (the answer follows the counted word).
    """
    objects = annotated_objects(scene, cfg, noisy)
    counts = Counter(o.shape for o in objects)
    use_present = rng.random() < 0.5 and counts
    shape = rng.choice(sorted(counts, key=cfg.shapes.index) if use_present else list(cfg.shapes))
    return [
        {
            "type": "count",
            "question": "How many objects" if _terse(cfg) else "How many objects are there?",
            "answer": str(len(objects)),
            "shape": None,
        },
        {
            "type": "count",
            "question": f"How many {plural(shape)}"
            if _terse(cfg)
            else f"How many {plural(shape)} are there?",
            "answer": str(counts[shape]),
            "shape": shape,
        },
    ]


def position_qa(
    scene: Scene, cfg: WorldConfig, rng: random.Random, noisy: bool = False, n: int = 1
) -> list[QA]:
    """``Where is the red circle?`` → ``top left`` for objects with a unique colour+shape.

    Terse style names the object as briefly as is unambiguous (:func:`unique_descriptor`: ``Where
    is the circle`` when the circle is the only one), as the colour questions do.
    """
    objects = annotated_objects(scene, cfg, noisy)
    if _terse(cfg):
        named = [(o, d) for o in objects if (d := unique_descriptor(o, objects))]
    else:
        named = [(o, describe(o, size=False)) for o in objects]
        named = [(o, d) for o, d in named if sum(describe(p, size=False) == d for p in objects) == 1]
    return [
        {
            "type": "position",
            "question": lookup_question(f"Where is the {d}", cfg),
            "answer": position_words(o.row, o.col, cfg.grid),
            "shape": o.shape,
            "color": o.color,
            "name": d,
        }
        for o, d in rng.sample(named, min(n, len(named)))
    ]


def relation_qa(scene: Scene, cfg: WorldConfig, rng: random.Random, noisy: bool = False) -> list[QA]:
    """One ``Is the circle to the left of the red square?`` yes/no question (yes with probability ½)."""
    objects = annotated_objects(scene, cfg, noisy)
    named = [(o, d) for o in objects if (d := unique_descriptor(o, objects))]
    if len(named) < 2:
        return []
    (a, da), (b, db) = rng.sample(named, 2)
    want_yes = rng.random() < 0.5
    # distinct cells: some direction always holds, and left/right never both do -> both pools non-empty
    rel = rng.choice([r for r in RELATIONS if relation_holds(r, a, b) == want_yes])
    answer = "yes" if relation_holds(rel, a, b) else "no"
    return [
        {
            "type": "relation",
            "question": f"Is the {da} {RELATION_PHRASES[rel]} the {db}?",
            "answer": answer,
            "relation": rel,
            "subject": da,
            "object": db,
        }
    ]


def _mc_item(
    question: str, truth: str, vocab: Sequence[str], rng: random.Random, **extra: object
) -> QA | None:
    distractors = [v for v in vocab if v != truth]
    if len(distractors) < len(LETTERS) - 1:
        return None
    options = rng.sample(distractors, len(LETTERS) - 1) + [truth]
    rng.shuffle(options)
    label = LETTERS[options.index(truth)]
    body = "\n".join(f"{letter}. {opt}" for letter, opt in zip(LETTERS, options, strict=True))
    return {
        "type": "multiple_choice",
        "question": f"{question}\n{body}\n{MC_SUFFIX}",
        "answer": label,
        "label": label,
        "options": options,
        "answer_text": truth,
        **extra,
    }


def multiple_choice_qa(scene: Scene, cfg: WorldConfig, rng: random.Random, noisy: bool = False) -> list[QA]:
    """One 4-option question: ``What shape is at the top left?`` or ``What color is the circle?``.

    The answer is the option letter (also in ``label``); ``options`` lists the four texts.
    Shape-at-position is used only for grids ≤ 3, where position words name a single cell.
    """
    objects = annotated_objects(scene, cfg, noisy)
    if not objects:
        return []
    use_position = rng.random() < 0.5 and cfg.grid <= 3
    if use_position:
        o = rng.choice(objects)
        where = position_words(o.row, o.col, cfg.grid)
        item = _mc_item(
            f"What shape is {'in the' if where == 'center' else 'at the'} {where}?",
            o.shape,
            cfg.shapes,
            rng,
            shape=o.shape,
            position=where,
        )
    else:
        counts = Counter(x.shape for x in objects)
        unique = [x for x in objects if counts[x.shape] == 1]
        if not unique:
            return []
        o = rng.choice(unique)
        item = _mc_item(f"What color is the {o.shape}?", o.color, cfg.colors, rng, shape=o.shape)
    return [item] if item else []


QA_GENERATORS: Mapping[str, Callable[..., list[QA]]] = MappingProxyType(
    {
        "existence": existence_qa,
        "color": color_qa,
        "count": count_qa,
        "position": position_qa,
        "relation": relation_qa,
        "multiple_choice": multiple_choice_qa,
    }
)


def image_qa(
    scene: Scene,
    cfg: WorldConfig,
    rng: random.Random,
    noisy: bool = False,
    types: Sequence[str] | None = None,
) -> list[QA]:
    """All QA items of the requested ``types`` (default: every type of :data:`QA_GENERATORS`)."""
    out: list[QA] = []
    for name in types or QA_GENERATORS:
        if name not in QA_GENERATORS:
            raise ValueError(f"unknown QA type {name!r}; choose from {sorted(QA_GENERATORS)}")
        out.extend(QA_GENERATORS[name](scene, cfg, rng, noisy=noisy))
    return out
