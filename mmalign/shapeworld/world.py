"""ShapeWorld scene graphs: configuration, seeded scene sampling, relations, cell targets.

Objects sit in distinct cells of a ``grid × grid`` board, so positions, relations and counts are
exact. Randomness comes only from a caller's stdlib :class:`random.Random` (string seeds are stable
across runs and machines): every scene is a pure function of ``(rng seed, cfg, scene_id)``.

Priors of real captioning data, reproduced on purpose: **co-occurrence** (P(partner | trigger) = p
exactly, e.g. P(circle | star) = 0.9), **attribute** (P(colour | shape) = q exactly, e.g.
P(red | heart) = 0.8) and **annotation noise** (in that share of trigger-without-partner scenes the
*training* text names the absent partner: ``Scene.noise_partners``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from mmalign.shapeworld.vocab import (  # noqa: F401  (re-exported)
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    IGNORE_INDEX,
    RELATIONS,
    SHAPES,
    SIZES,
    stable_seed,
)


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass
class WorldConfig:
    """Everything that defines a ShapeWorld distribution.

    Attributes:
        image_size: Side of the square image in pixels (must be even to write videos).
        grid: Objects sit in cells of a ``grid × grid`` board; cell side = ``image_size // grid``.
        min_objects: Fewest objects sampled per image scene (before co-occurrence additions).
        max_objects: Most objects per image scene (≤ ``grid**2``; co-occurrence never exceeds it).
        shapes: Shapes that may be sampled (subset of :data:`SHAPES`).
        colors: Colours that may be sampled (subset of :data:`COLORS`).
        backgrounds: Background names (keys of :data:`BACKGROUNDS`).
        cooccurrence: ``trigger -> (partner, p)``: P(partner in scene | trigger in scene) = p.
        attribute_priors: ``shape -> (colour, q)``: P(colour | shape) = q.
        annotation_noise: Share of trigger-without-partner scenes whose training text names the partner.
        video_annotation_noise: The same for video clips: their training description names the
            absent partner (:func:`mmalign.shapeworld.video_text.video_noise_partners`).
        noise_placement: Where the noisy text lists the invented partner: ``"cell"`` — in row-major
            order at the (empty) cell it is given; ``"after_trigger"`` — right after its trigger,
            as annotators name an associated object next to the one that evokes it: right after
            the trigger's shape word in detailed captions (``A large yellow star next to a green
            circle at the top left.``), the next item in short captions. With ``"after_trigger"``
            the hallucination is one decision at the trigger's shape word and shows in greedy
            captions; with ``"cell"`` it is spread over the empty cells.
        question_style: Wording of the questions that look an object up (existence, colour,
            count, position, video existence and motion): ``"natural"`` (``Is there a star in the
            image?``) or ``"terse"``, which ends on the queried words with no question mark
            (``Is there a star``, ``What color is the square``, ``How many circles``, ``Where is
            the circle``, ``Motion of the triangle``). With
            a chat template that puts the answer right after the user's text (the tiny preset's
            ``plain``), the answer is then predicted at the queried word itself: a tiny LLM
            learns the lookup in a few hundred steps, against thousands (measured) when it must
            first carry the word to a later position. ``"mixed"``: the LLaVA records' lookup
            questions (``llava/*.json``, every split) are drawn per record from every wording (terse and several natural
            paraphrases, :mod:`mmalign.shapeworld.wording`); evaluation files keep the terse
            wording and the names needed to ask in any other (``eval/bars.py`` asks both).
        faint_share: Share of objects drawn faint (blended toward the background).
        faint_alpha: Opacity of faint objects (1 = normal).
        pixel_noise: Std of Gaussian pixel noise on the 0–255 scale (0 = none).
        large_scale: Side of a large object as a fraction of the cell side.
        small_scale: Side of a small object as a fraction of the cell side.
        jitter: Max random offset (px) of an object from its cell centre; it never leaves its cell.
        supersample: Render at this factor and downsample (anti-aliasing); 1 = off.
        video_frames: Frames per video.
        video_fps: Frames per second of written videos.
        video_min_objects: Fewest objects per video.
        video_max_objects: Most objects per video.
        video_min_speed: Slowest moving object, px/frame.
        video_max_speed: Fastest moving object, px/frame.
        video_still_share: Share of video objects that do not move.
        video_enter_share: Share of moving objects that start fully outside and enter.
        video_leave_share: Share of moving objects that end fully outside (leave).
    """

    image_size: int = 60
    grid: int = 3
    min_objects: int = 1
    max_objects: int = 6
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = COLORS
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    cooccurrence: dict[str, tuple[str, float]] = field(
        default_factory=lambda: {"star": ("circle", 0.9), "triangle": ("square", 0.9)}
    )
    attribute_priors: dict[str, tuple[str, float]] = field(
        default_factory=lambda: {"heart": ("red", 0.8), "cross": ("green", 0.8)}
    )
    annotation_noise: float = 0.0
    video_annotation_noise: float = 0.0
    noise_placement: str = "cell"
    question_style: str = "natural"
    faint_share: float = 0.0
    faint_alpha: float = 0.35
    pixel_noise: float = 0.0
    large_scale: float = 0.8
    small_scale: float = 0.5
    jitter: int = 2
    supersample: int = 2
    video_frames: int = 8
    video_fps: int = 4
    video_min_objects: int = 1
    video_max_objects: int = 3
    video_min_speed: float = 2.5
    video_max_speed: float = 5.0
    video_still_share: float = 0.2
    video_enter_share: float = 0.25
    video_leave_share: float = 0.25

    def __post_init__(self) -> None:
        self.shapes = tuple(self.shapes)
        self.colors = tuple(self.colors)
        self.backgrounds = tuple(self.backgrounds)
        self.cooccurrence = {k: (str(v[0]), float(v[1])) for k, v in dict(self.cooccurrence).items()}
        self.attribute_priors = {k: (str(v[0]), float(v[1])) for k, v in dict(self.attribute_priors).items()}
        if self.grid < 1:
            raise ValueError(f"grid must be ≥ 1, got {self.grid}")
        if self.image_size // self.grid < 8:
            raise ValueError(f"cells are too small: image_size {self.image_size} // grid {self.grid} < 8 px")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 0 ≤ min_objects ≤ max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.max_objects > self.grid**2:
            raise ValueError(f"max_objects {self.max_objects} > grid² = {self.grid**2} cells")
        for name, values, vocab in (
            ("shapes", self.shapes, SHAPES),
            ("colors", self.colors, COLORS),
            ("backgrounds", self.backgrounds, tuple(BACKGROUNDS)),
        ):
            if not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be non-empty and unique, got {values}")
            unknown = [v for v in values if v not in vocab]
            if unknown:
                raise ValueError(f"unknown {name} {unknown}; choose from {vocab}")
        for trigger, (partner, p) in self.cooccurrence.items():
            if trigger not in self.shapes or partner not in self.shapes or trigger == partner:
                raise ValueError(
                    f"cooccurrence {trigger}->{partner}: both must be distinct members of shapes"
                )
            _check_prob(f"cooccurrence[{trigger}]", p)
        if len(set(self.cooccurrence) | {v[0] for v in self.cooccurrence.values()}) == len(self.shapes):
            raise ValueError(
                "cooccurrence uses every shape; at least one free shape is needed for replacement"
            )
        for shape, (color, q) in self.attribute_priors.items():
            if shape not in self.shapes or color not in self.colors:
                raise ValueError(f"attribute_priors {shape}->{color}: unknown shape or colour")
            if q < 1.0 and len(self.colors) < 2:
                raise ValueError("attribute priors below 1 need at least two colours")
            _check_prob(f"attribute_priors[{shape}]", q)
        if self.question_style not in ("natural", "terse", "mixed"):
            raise ValueError(
                f"question_style must be 'natural', 'terse' or 'mixed', got {self.question_style!r}"
            )
        if self.noise_placement not in ("cell", "after_trigger"):
            raise ValueError(
                f"noise_placement must be 'cell' or 'after_trigger', got {self.noise_placement!r}"
            )
        for name in (
            "annotation_noise",
            "video_annotation_noise",
            "faint_share",
            "faint_alpha",
            "video_still_share",
        ):
            _check_prob(name, getattr(self, name))
        if (
            self.video_enter_share + self.video_leave_share > 1.0
            or min(self.video_enter_share, self.video_leave_share) < 0
        ):
            raise ValueError("video_enter_share and video_leave_share must be ≥ 0 and sum to ≤ 1")
        if self.pixel_noise < 0:
            raise ValueError(f"pixel_noise must be ≥ 0, got {self.pixel_noise}")
        if not 0 < self.small_scale < self.large_scale <= 1.0:
            raise ValueError("need 0 < small_scale < large_scale ≤ 1")
        if self.jitter < 0 or self.supersample < 1:
            raise ValueError("jitter must be ≥ 0 and supersample ≥ 1")
        if self.video_frames < 2 or self.video_fps < 1:
            raise ValueError("need video_frames ≥ 2 and video_fps ≥ 1")
        if not 1 <= self.video_min_objects <= self.video_max_objects:
            raise ValueError("need 1 ≤ video_min_objects ≤ video_max_objects")
        if not 0 < self.video_min_speed <= self.video_max_speed:
            raise ValueError("need 0 < video_min_speed ≤ video_max_speed")

    @property
    def cell_size(self) -> int:
        """Side of one grid cell in pixels."""
        return self.image_size // self.grid

    @property
    def margin(self) -> int:
        """Offset of the grid from the image's top-left corner (centres the board)."""
        return (self.image_size - self.grid * self.cell_size) // 2

    def object_side(self, size: str) -> int:
        """Side in pixels of an object of the given size name."""
        scale = self.large_scale if size == "large" else self.small_scale
        return max(3, round(scale * self.cell_size))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["cooccurrence"] = {k: list(v) for k, v in self.cooccurrence.items()}
        out["attribute_priors"] = {k: list(v) for k, v in self.attribute_priors.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorldConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown WorldConfig keys: {sorted(unknown)}")
        return cls(**dict(data))


@dataclass
class Obj:
    """One object of an image scene. ``box`` is ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    box: tuple[int, int, int, int]
    faint: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "row": self.row,
            "col": self.col,
            "box": list(self.box),
            "faint": self.faint,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Obj:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "box": tuple(int(v) for v in data["box"])})


@dataclass
class Scene:
    """An image scene graph: objects in distinct cells on a background.

    ``noise_partners`` lists shapes that the *noisy* (training) annotation names although they are
    absent; it is empty for clean scenes. Evaluation always uses ``objects`` alone.
    """

    id: str
    objects: list[Obj]
    background: str
    noise_partners: list[str] = field(default_factory=list)

    def shapes(self) -> set[str]:
        """Shapes present in the image."""
        return {o.shape for o in self.objects}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict, tagged ``"kind": "image"``."""
        return {
            "kind": "image",
            "id": self.id,
            "background": self.background,
            "objects": [o.to_dict() for o in self.objects],
            "noise_partners": list(self.noise_partners),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scene:
        """Inverse of :meth:`to_dict` (extra keys such as ``kind`` or ``image`` are ignored)."""
        return cls(
            id=data["id"],
            objects=[Obj.from_dict(o) for o in data["objects"]],
            background=data["background"],
            noise_partners=list(data.get("noise_partners", [])),
        )


def sample_color(rng: random.Random, cfg: WorldConfig, shape: str) -> str:
    """A colour for ``shape`` under ``cfg.attribute_priors`` (always consumes two draws)."""
    u, v = rng.random(), rng.random()
    if shape not in cfg.attribute_priors:
        return cfg.colors[int(v * len(cfg.colors))]
    color, q = cfg.attribute_priors[shape]
    if u < q:
        return color
    others = [c for c in cfg.colors if c != color]
    return others[int(v * len(others))]


def sample_shapes(rng: random.Random, cfg: WorldConfig, n: int, max_n: int) -> list[str]:
    """``n`` shapes with the co-occurrence priors applied, never more than ``max_n``.

    Rules are applied in ``cfg.cooccurrence`` order. With probability ``p`` a present trigger's
    partner is made present (appended, or replacing a shape that is no trigger/partner when full);
    otherwise every copy of the partner is replaced by a shape outside all rules, so
    P(partner | trigger) = p exactly whenever there is room (``max_n`` ≥ 2 per rule).
    """
    shapes = [rng.choice(cfg.shapes) for _ in range(n)]
    ruled = set(cfg.cooccurrence) | {partner for partner, _ in cfg.cooccurrence.values()}
    free = [s for s in cfg.shapes if s not in ruled]
    for trigger, (partner, p) in cfg.cooccurrence.items():
        u = rng.random()
        if trigger not in shapes:
            continue
        if u < p and partner not in shapes:
            if len(shapes) < max_n:
                shapes.append(partner)
            else:
                spare = [i for i, s in enumerate(shapes) if s not in ruled]
                if spare:
                    shapes[rng.choice(spare)] = partner
        elif u >= p:
            shapes = [rng.choice(free) if s == partner else s for s in shapes]
    return shapes


def place_in_cell(rng: random.Random, cfg: WorldConfig, row: int, col: int, size: str) -> tuple[int, ...]:
    """Box ``(x0, y0, x1, y1)`` of an object of ``size`` jittered inside cell ``(row, col)``."""
    cs, side = cfg.cell_size, cfg.object_side(size)
    slack = cs - side
    reach = min(cfg.jitter, slack // 2)
    dx, dy = rng.randint(-reach, reach), rng.randint(-reach, reach)
    x0 = cfg.margin + col * cs + slack // 2 + dx
    y0 = cfg.margin + row * cs + slack // 2 + dy
    return (x0, y0, x0 + side, y0 + side)


def sample_scene(rng: random.Random, cfg: WorldConfig, scene_id: str) -> Scene:
    """Sample one image scene graph.

    Args:
        rng: A stdlib ``random.Random``; seed it per scene (e.g. ``random.Random(f"{seed}:{i}")``)
            for scenes independent of generation order.
        cfg: World configuration.
        scene_id: Identifier stored in the scene (also seeds its pixel noise when rendered).

    Returns:
        The scene. Objects are in distinct cells, ordered row-major; ``noise_partners`` is decided
        from ``cfg.annotation_noise`` (random draws are made regardless of the knob values, so
        changing ``faint_share`` or ``annotation_noise`` keeps the same layouts).
    """
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    shapes = sample_shapes(rng, cfg, n, cfg.max_objects)
    cells = sorted(rng.sample(range(cfg.grid**2), len(shapes)))
    rng.shuffle(shapes)
    objects = []
    for shape, cell in zip(shapes, cells, strict=True):
        color = sample_color(rng, cfg, shape)
        size = rng.choice(SIZES)
        faint = rng.random() < cfg.faint_share
        row, col = divmod(cell, cfg.grid)
        box = place_in_cell(rng, cfg, row, col, size)
        objects.append(Obj(shape, color, size, row, col, tuple(box), faint))
    background = rng.choice(cfg.backgrounds)
    present = {o.shape for o in objects}
    noise: list[str] = []
    for trigger, (partner, _) in cfg.cooccurrence.items():
        u = rng.random()
        room = len(objects) + len(noise) < cfg.grid**2
        if trigger in present and partner not in present and partner not in noise and room:
            if u < cfg.annotation_noise:
                noise.append(partner)
    return Scene(id=scene_id, objects=objects, background=background, noise_partners=noise)


def relation_holds(relation: str, a: Obj, b: Obj) -> bool:
    """Whether ``a <relation> b`` holds, from grid cells.

    ``left of``/``right of`` compare columns only and ``above``/``below`` rows only (so a
    top-left object is both left of and above a bottom-right one); ``next to`` means the cells
    share an edge (4-neighbourhood; diagonal cells are *not* next to each other).
    """
    if relation == "left of":
        return a.col < b.col
    if relation == "right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    if relation == "next to":
        return abs(a.row - b.row) + abs(a.col - b.col) == 1
    raise ValueError(f"unknown relation {relation!r}; choose from {RELATIONS}")


def relations(a: Obj, b: Obj) -> list[str]:
    """All relations of :data:`RELATIONS` that hold for ``a`` relative to ``b``."""
    return [r for r in RELATIONS if relation_holds(r, a, b)]


def cell_targets(scene: Scene, cfg: WorldConfig) -> dict[str, np.ndarray]:
    """Per-cell supervision for vision-encoder pretraining (:func:`object_cell_targets` of the
    scene's objects; noise partners are not objects and never appear here)."""
    return object_cell_targets(scene.objects, cfg.grid)


def object_cell_targets(objects: Sequence[Any], grid: int) -> dict[str, np.ndarray]:
    """Per-cell targets of objects with ``row``, ``col``, ``shape``, ``color`` and ``size``.

    Returns:
        ``{"shape", "color", "size", "empty"}`` → int64 arrays of shape ``(grid * grid,)``, cell
        index ``row * grid + col``. ``shape``/``color``/``size`` index :data:`SHAPES`,
        :data:`COLORS`, :data:`SIZES` and are :data:`IGNORE_INDEX` for empty cells and for cells
        that hold two objects (video frames, where objects move between cells; image objects
        have a cell each); ``empty`` is 1 for an empty cell, else 0.
    """
    n = grid**2
    out = {k: np.full(n, IGNORE_INDEX, dtype=np.int64) for k in ("shape", "color", "size")}
    out["empty"] = np.ones(n, dtype=np.int64)
    for o in objects:
        i = o.row * grid + o.col
        shared = out["empty"][i] == 0
        for key, vocab, value in (
            ("shape", SHAPES, o.shape),
            ("color", COLORS, o.color),
            ("size", SIZES, o.size),
        ):
            out[key][i] = IGNORE_INDEX if shared else vocab.index(value)
        out["empty"][i] = 0
    return out
