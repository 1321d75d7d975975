"""Captions and dense (box-level) captions generated from image scene graphs.

Text is a deterministic function of the scene; only instruction prompts are drawn from an rng.
With ``noisy=True`` the *annotation* (not the image) also holds the scene's noise partners: each is
invented as an object in an empty cell with a plausible colour and size drawn from an rng seeded by
the scene id and partner, so captions, dense captions and QA of one scene agree on it.
"""

from __future__ import annotations

import random

from mmalign.shapeworld.vocab import SIZES, stable_seed
from mmalign.shapeworld.world import Obj, Scene, WorldConfig, place_in_cell, sample_color

DETAILED_PROMPTS: tuple[str, ...] = (
    "Describe the image in detail.",
    "Describe every object in the image.",
    "What is in this image? Describe each object and where it is.",
)
SHORT_PROMPTS: tuple[str, ...] = (
    "Give a short caption of the image.",
    "Briefly describe the image.",
)
NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
)


def plural(shape: str) -> str:
    """Plural of a shape noun (``cross`` → ``crosses``)."""
    return shape + "es" if shape.endswith(("s", "x", "sh", "ch")) else shape + "s"


def position_words(row: int, col: int, grid: int) -> str:
    """Words for a cell: ``top left``, ``top``, ``left``, ``center``, ``bottom right`` …

    Unique per cell for ``grid`` ≤ 3; larger grids map rows/columns onto thirds (coarse but true).
    """

    def bucket(i: int, words: tuple[str, str, str]) -> str:
        if grid == 1:
            return words[1]
        if grid == 2:
            return words[0] if i == 0 else words[2]
        return words[min(2, i * 3 // grid)]

    r, c = bucket(row, ("top", "middle", "bottom")), bucket(col, ("left", "center", "right"))
    if r == "middle":
        return "center" if c == "center" else c
    return r if c == "center" else f"{r} {c}"


def position_phrase(row: int, col: int, grid: int) -> str:
    """Prepositional phrase for a cell: ``at the top left``, ``on the left``, ``in the center``."""
    words = position_words(row, col, grid)
    if words == "center":
        return "in the center"
    if words in ("left", "right"):
        return f"on the {words}"
    return f"at the {words}"


def describe(obj: Obj, size: bool = True, color: bool = True) -> str:
    """Noun phrase without article: ``large red circle``."""
    parts = ([obj.size] if size else []) + ([obj.color] if color else []) + [obj.shape]
    return " ".join(parts)


def article(phrase: str) -> str:
    """``a``/``an`` for a phrase."""
    return "an" if phrase[0] in "aeiou" else "a"


def invented_partners(scene: Scene, cfg: WorldConfig) -> list[Obj]:
    """Objects the noisy annotation adds for ``scene.noise_partners`` (empty cells, plausible attributes)."""
    taken = {(o.row, o.col) for o in scene.objects}
    out = []
    for partner in scene.noise_partners:
        rng = random.Random(stable_seed("noise-partner", scene.id, partner))
        free = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid) if (r, c) not in taken]
        if not free:
            break
        row, col = rng.choice(free)
        taken.add((row, col))
        color = sample_color(rng, cfg, partner)
        size = rng.choice(SIZES)
        box = place_in_cell(rng, cfg, row, col, size)
        out.append(Obj(partner, color, size, row, col, tuple(box), False))
    return out


def annotated_objects(scene: Scene, cfg: WorldConfig, noisy: bool = False) -> list[Obj]:
    """Objects the annotation describes: the true ones row-major, plus invented partners if ``noisy``.

    An invented partner is listed at its cell in row-major order, or (``cfg.noise_placement ==
    "after_trigger"``) right after the first object of its trigger shape.
    """
    objects = sorted(scene.objects, key=lambda o: (o.row, o.col))
    if not (noisy and scene.noise_partners):
        return objects
    invented = invented_partners(scene, cfg)
    if cfg.noise_placement == "cell":
        return sorted(objects + invented, key=lambda o: (o.row, o.col))
    trigger_of = {partner: trigger for trigger, (partner, _) in cfg.cooccurrence.items()}
    for obj in invented:
        at = next(i for i, o in enumerate(objects) if o.shape == trigger_of[obj.shape])
        objects.insert(at + 1, obj)
    return objects


def count_sentence(n: int, noun: str = "object") -> str:
    """``There is 1 object.`` / ``There are 3 objects.`` / ``There are no objects.``"""
    if n == 0:
        return f"There are no {noun}s."
    return f"There is 1 {noun}." if n == 1 else f"There are {n} {noun}s."


def detailed_caption(scene: Scene, cfg: WorldConfig, noisy: bool = False) -> str:
    """Every object with size, colour, shape and position, row-major.

    Example: ``There are 2 objects. A large red circle at the top left. A small blue square in
    the center.`` With ``noisy`` and ``cfg.noise_placement == "after_trigger"`` an invented partner
    follows its trigger's shape word: ``A large blue triangle next to a white square at the top
    left.``
    """
    objects = annotated_objects(scene, cfg, noisy)
    clauses = invented_partners(scene, cfg) if noisy and cfg.noise_placement == "after_trigger" else []
    # [subject, position] per sentence; an invented partner listed right after its trigger
    # becomes part of the trigger's subject, directly after the shape word (where a small LM
    # decides to write it): "A large blue triangle next to a white square at the top left."
    parts: list[list[str]] = []
    for o in objects:
        if o in clauses:
            short = describe(o, size=False)
            parts[-1][0] += f" next to {article(short)} {short}"
            continue
        phrase = describe(o)
        parts.append([f"{article(phrase).capitalize()} {phrase}", position_phrase(o.row, o.col, cfg.grid)])
    return " ".join([count_sentence(len(objects))] + [f"{subject} {where}." for subject, where in parts])


def short_caption(scene: Scene, cfg: WorldConfig, noisy: bool = False) -> str:
    """Colour and shape of every object: ``A red circle, a blue square and a green star.``"""
    objects = annotated_objects(scene, cfg, noisy)
    if not objects:
        return "An empty image."
    items = [f"{article(p)} {p}" for p in (describe(o, size=False) for o in objects)]
    text = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return text[0].upper() + text[1:] + "."


def dense_captions(scene: Scene, cfg: WorldConfig, noisy: bool = False) -> list[dict]:
    """Per-object region captions (Visual Genome / LRV style).

    Returns:
        ``[{"caption": "large red circle", "box": [x, y, w, h]}, ...]`` in pixels, row-major.
    """
    out = []
    for o in annotated_objects(scene, cfg, noisy):
        x0, y0, x1, y1 = o.box
        out.append({"caption": describe(o), "box": [x0, y0, x1 - x0, y1 - y0]})
    return out


def caption_prompt(rng: random.Random, detailed: bool = True) -> str:
    """An instruction asking for a detailed (or short) caption."""
    return rng.choice(DETAILED_PROMPTS if detailed else SHORT_PROMPTS)
