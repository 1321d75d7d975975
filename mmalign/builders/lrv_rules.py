"""LRV-Instruction's instructions from a :class:`SceneDesc`, by rules: positive tasks and three negative kinds.

LRV-Instruction (https://arxiv.org/abs/2306.14565) pairs positive instructions with negative ones
whose answers explain what is really in the image:

* **nonexistent element manipulation** — a question about an object that is absent;
* **existent element manipulation** — a present object named with a wrong attribute;
* **knowledge manipulation** (the later release) — a question stating a wrong fact about a present
  object (``Why does the triangle have four sides?``).

Every generator is ``(scene, rng, variant=None) -> Instruction | None`` (None when the scene does
not allow it); ``variant`` picks the question template (random when None). Answers stay under 30
words for scenes of up to 6 objects.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mmalign.builders.scene import (
    COLOR_WORDS,
    SceneDesc,
    Thing,
    count_phrase,
    listing,
    position_phrase,
    with_article,
)
from mmalign.shapeworld.captions import NUMBER_WORDS, plural
from mmalign.shapeworld.vocab import COLORS, SHAPES

NEGATIVE_KINDS: tuple[str, ...] = ("nonexistent_element", "existent_element", "knowledge")
KNOWLEDGE: Mapping[str, tuple[str, int]] = {
    "triangle": ("sides", 3),
    "square": ("sides", 4),
    "diamond": ("sides", 4),
    "hexagon": ("sides", 6),
    "star": ("points", 5),
    "cross": ("arms", 4),
    "circle": ("corners", 0),
}
"""Default facts for knowledge manipulation (ShapeWorld): ``name -> (property, true number)``."""


@dataclass(frozen=True)
class Instruction:
    """One LRV instruction: ``task`` is a positive task name or ``negative`` (then ``kind`` says which)."""

    question: str
    answer: str
    task: str
    kind: str | None = None


@dataclass(frozen=True)
class Vocab:
    """What may be named although absent, and the values attributes may take."""

    names: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = COLORS
    sizes: tuple[str, ...] = ("small", "large")
    knowledge: Mapping[str, tuple[str, int]] = field(default_factory=lambda: dict(KNOWLEDGE))


def _pick(rng: random.Random, n: int, variant: int | None) -> int:
    return rng.randrange(n) if variant is None else variant % n


def _short(scene: SceneDesc) -> str:
    return listing([with_article(t.describe(("color",))) for t in scene.things])


def _where(scene: SceneDesc, thing: Thing) -> str:
    pos = scene.position(thing)
    return f" {position_phrase(pos)}" if pos else ""


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


# ---------------------------------------------------------------- positive tasks
def image_captioning(scene: SceneDesc, rng: random.Random, variant: int | None = None) -> Instruction | None:
    """``Give a short caption of the image.`` → ``A red circle and a blue square.``"""
    if not scene.things:
        return None
    q = ("Give a short caption of the image.", "Briefly describe the image.")[_pick(rng, 2, variant)]
    text = _short(scene)
    return Instruction(q, text[0].upper() + text[1:] + ".", "image_captioning")


def object_detection(scene: SceneDesc, rng: random.Random, variant: int | None = None) -> Instruction | None:
    """``Is there a circle in the image?`` → ``Yes, there is a large red circle at the top left.``"""
    if not scene.things:
        return None
    t = rng.choice(scene.unique() or scene.things)
    n = scene.count(t.name)
    q = f"Is there {with_article(t.name)} in the image?"
    if n == 1:
        return Instruction(
            q, f"Yes, there is {with_article(t.describe())}{_where(scene, t)}.", "object_detection"
        )
    return Instruction(q, f"Yes, there are {count_phrase(n, t.name)} in the image.", "object_detection")


def attribute_detection(
    scene: SceneDesc, rng: random.Random, variant: int | None = None
) -> Instruction | None:
    """``What color is the circle?`` → ``The circle is red.`` (unique names only)."""
    cands = [t for t in scene.unique() if "color" in t.attrs]
    if not cands:
        return None
    t = rng.choice(cands)
    return Instruction(
        f"What color is the {t.name}?", f"The {t.name} is {t.attrs['color']}.", "attribute_detection"
    )


def counting(scene: SceneDesc, rng: random.Random, variant: int | None = None) -> Instruction | None:
    """``How many circles are there?`` → ``There are 2 circles.``; or all objects."""
    if not scene.things:
        return None
    if _pick(rng, 2, variant) == 0:
        n = len(scene.things)
        return Instruction(
            "How many objects are there?",
            f"There {'is' if n == 1 else 'are'} {count_phrase(n, 'object')}.",
            "counting",
        )
    name = rng.choice(sorted(scene.names()))
    n = scene.count(name)
    return Instruction(
        f"How many {plural(name)} are there?",
        f"There {'is' if n == 1 else 'are'} {count_phrase(n, name)}.",
        "counting",
    )


def referring_expression(
    scene: SceneDesc, rng: random.Random, variant: int | None = None
) -> Instruction | None:
    """``Where is the red circle?`` → ``The red circle is at the top left.`` (needs boxes)."""
    cands = [t for t in scene.things if scene.position(t)]
    named = [(t, t.describe(("color",))) for t in cands]
    named = [(t, d) for t, d in named if sum(s.describe(("color",)) == d for s in scene.things) == 1]
    if not named:
        return None
    t, d = rng.choice(named)
    return Instruction(
        f"Where is the {d}?",
        f"The {d} is {position_phrase(scene.position(t) or '')}.",
        "referring_expression",
    )


def spatial_relation(scene: SceneDesc, rng: random.Random, variant: int | None = None) -> Instruction | None:
    """``Where is the circle relative to the square?`` → ``The circle is above and to the left of the square.``"""
    cands = [t for t in scene.unique() if t.box]
    if len(cands) < 2:
        return None
    a, b = rng.sample(cands, 2)
    rels = _relations(a, b)
    if not rels:
        return None
    return Instruction(
        f"Where is the {a.name} relative to the {b.name}?",
        f"The {a.name} is {' and '.join(rels)} the {b.name}.",
        "spatial_relation",
    )


def _relations(a: Thing, b: Thing) -> list[str]:
    ax, ay, aw, ah = a.box  # type: ignore[misc]
    bx, by, bw, bh = b.box  # type: ignore[misc]
    out = []
    if ay + ah <= by:
        out.append("above")
    elif by + bh <= ay:
        out.append("below")
    if ax + aw <= bx:
        out.append("to the left of")
    elif bx + bw <= ax:
        out.append("to the right of")
    return out


def multi_choice_vqa(
    scene: SceneDesc, rng: random.Random, variant: int | None = None, vocab: Vocab = Vocab()
) -> Instruction | None:
    """``What color is the circle? A. blue B. red …`` → ``B. red``."""
    cands = [t for t in scene.unique() if t.attrs.get("color") in vocab.colors]
    if not cands or len(vocab.colors) < 4:
        return None
    t = rng.choice(cands)
    options = rng.sample([c for c in vocab.colors if c != t.attrs["color"]], 3) + [t.attrs["color"]]
    rng.shuffle(options)
    letter = "ABCD"[options.index(t.attrs["color"])]
    body = " ".join(f"{k}. {o}" for k, o in zip("ABCD", options, strict=True))
    return Instruction(
        f"What color is the {t.name}? {body}", f"{letter}. {t.attrs['color']}", "multi_choice_vqa"
    )


def visual_entailment(scene: SceneDesc, rng: random.Random, variant: int | None = None) -> Instruction | None:
    """``Does the caption "…" match the image?`` with the true short caption → ``Yes, …``."""
    if not scene.things:
        return None
    text = _short(scene)
    return Instruction(
        f'Does the caption "{text[0].upper() + text[1:]}." match the image?',
        f"Yes, the image shows {text}.",
        "visual_entailment",
    )


POSITIVE_TASKS: Mapping[str, Callable[..., Instruction | None]] = {
    "image_captioning": image_captioning,
    "object_detection": object_detection,
    "attribute_detection": attribute_detection,
    "counting": counting,
    "referring_expression": referring_expression,
    "spatial_relation": spatial_relation,
    "multi_choice_vqa": multi_choice_vqa,
    "visual_entailment": visual_entailment,
}


# ---------------------------------------------------------------- negatives
def nonexistent_element(
    scene: SceneDesc, rng: random.Random, variant: int | None = None, vocab: Vocab = Vocab()
) -> Instruction | None:
    """A question about an absent object; the answer says it is absent and lists what is there."""
    absent = [n for n in vocab.names if n not in scene.names()]
    if not absent:
        return None
    x = rng.choice(absent)
    anchors = scene.unique()
    k = _pick(rng, 3 if anchors else 2, variant)
    if k == 0:
        q = f"What color is the {x}?"
    elif k == 1:
        q = f"Where is the {x} in the image?"
    else:
        q = f"Is the {x} to the left of the {rng.choice(anchors).name}?"
    seen = f" The image shows {_short(scene)}." if scene.things else " The image shows no objects."
    return Instruction(q, f"There is no {x} in the image.{seen}", "negative", "nonexistent_element")


def existent_element(
    scene: SceneDesc, rng: random.Random, variant: int | None = None, vocab: Vocab = Vocab()
) -> Instruction | None:
    """A present object named with a wrong colour (or size); the answer corrects it."""
    unique = scene.unique()
    cands = [(t, "color", vocab.colors) for t in unique if t.attrs.get("color") in COLOR_WORDS]
    cands += [(t, "size", vocab.sizes) for t in unique if "size" in t.attrs and "color" not in t.attrs]
    if not cands:
        return None
    t, cat, values = rng.choice(cands)
    wrong_values = [v for v in values if v != t.attrs[cat]]
    if not wrong_values:
        return None
    wrong = rng.choice(wrong_values)
    fake = Thing(t.name, {**t.attrs, cat: wrong})
    k = _pick(rng, 2, variant)
    if k == 0:
        q = f"What is the {fake.describe((cat,))} doing in the image?"
    else:
        q = f"Describe the {fake.describe((cat,))} in the image."
    a = f"There is no {fake.describe((cat,))} in the image. The {t.name}{_where(scene, t)} is {t.attrs[cat]}, not {wrong}."
    return Instruction(q, a, "negative", "existent_element")


def knowledge(
    scene: SceneDesc, rng: random.Random, variant: int | None = None, vocab: Vocab = Vocab()
) -> Instruction | None:
    """A wrong fact about a present object in the question; the answer states the fact and the object."""
    cands = [t for t in scene.unique() if t.name in vocab.knowledge]
    if not cands:
        return None
    t = rng.choice(cands)
    prop, truth = vocab.knowledge[t.name]
    wrong = rng.choice([n for n in range(max(2, truth - 2), truth + 4) if n != truth])
    k = _pick(rng, 2, variant)
    if k == 0:
        q = f"Why does the {t.name} in the image have {_number(wrong)} {prop}?"
    else:
        q = f"The {t.name} in the image has {_number(wrong)} {prop}. What color is it?"
    fact = f"A {t.name} has no {prop}" if truth == 0 else f"A {t.name} has {_number(truth)} {prop}"
    a = f"{fact}, not {_number(wrong)}. The image shows {with_article(t.describe())}{_where(scene, t)}."
    return Instruction(q, a, "negative", "knowledge")


NEGATIVE_GENERATORS: Mapping[str, Callable[..., Instruction | None]] = {
    "nonexistent_element": nonexistent_element,
    "existent_element": existent_element,
    "knowledge": knowledge,
}


def lrv_instructions(
    scene: SceneDesc,
    rng: random.Random,
    n_positive: int,
    n_negative: int,
    tasks: Sequence[str] = tuple(POSITIVE_TASKS),
    kinds: Sequence[str] = NEGATIVE_KINDS,
    vocab: Vocab = Vocab(),
) -> list[Instruction]:
    """Up to ``n_positive`` positives (distinct tasks first) and ``n_negative`` negatives (kinds in turn).

    Kinds a scene does not allow are replaced by the next kind; questions are never repeated.
    """
    out: list[Instruction] = []
    asked: set[str] = set()

    def add(inst: Instruction | None) -> bool:
        if inst is None or inst.question in asked:
            return False
        asked.add(inst.question)
        out.append(inst)
        return True

    order = list(tasks)
    rng.shuffle(order)
    made, tries = 0, 0
    while made < n_positive and tries < 3 * max(1, len(order)) and order:
        name = order[tries % len(order)]
        gen = POSITIVE_TASKS[name]
        inst = gen(scene, rng, vocab=vocab) if name == "multi_choice_vqa" else gen(scene, rng)
        made += add(inst)
        tries += 1
    kind_order = list(kinds)
    rng.shuffle(kind_order)
    made, tries = 0, 0
    while made < n_negative and tries < 3 * max(1, len(kind_order)) and kind_order:
        made += add(NEGATIVE_GENERATORS[kind_order[tries % len(kind_order)]](scene, rng, vocab=vocab))
        tries += 1
    return out
