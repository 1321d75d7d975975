"""Rendering ShapeWorld scenes with PIL: exact boxes, optional faintness and pixel noise.

Shapes are drawn at ``cfg.supersample`` × resolution and box-downsampled (anti-aliasing), so
object interiors keep their exact RGB while edges are smooth. A faint object is drawn in its colour
blended toward the background with opacity ``cfg.faint_alpha``. Pixel noise is Gaussian with std
``cfg.pixel_noise`` from a NumPy generator seeded by the scene id, so a render is a pure function of
``(scene, cfg)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from mmalign.shapeworld.vocab import BACKGROUNDS, COLOR_RGB, stable_seed
from mmalign.shapeworld.world import Scene, WorldConfig

Box = Sequence[float]


def unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Vertices of ``shape`` in the unit square ``[0, 1]²`` (y down); circles are not polygons."""
    if shape == "square":
        return [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if shape == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if shape == "hexagon":
        return [
            (0.5 + 0.5 * math.cos(math.pi / 3 * k), 0.5 + 0.5 * math.sin(math.pi / 3 * k)) for k in range(6)
        ]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.2
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((0.5 + r * math.cos(a), 0.55 + r * math.sin(a)))
        return pts
    if shape == "cross":
        a, b = 1 / 3, 2 / 3
        return [
            (a, 0),
            (b, 0),
            (b, a),
            (1, a),
            (1, b),
            (b, b),
            (b, 1),
            (a, 1),
            (a, b),
            (0, b),
            (0, a),
            (a, a),
        ]
    if shape == "heart":
        raw = []
        for k in range(32):
            t = 2 * math.pi * k / 32
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            raw.append((x, -y))
        xs, ys = [p[0] for p in raw], [p[1] for p in raw]
        x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
        return [((x - x0) / w, (y - y0) / h) for x, y in raw]
    raise ValueError(f"no polygon for shape {shape!r}")


def object_rgb(color: str, background: str, faint: bool, alpha: float) -> tuple[int, int, int]:
    """Fill colour of an object: its RGB, or blended toward the background when faint."""
    rgb = COLOR_RGB[color]
    if not faint:
        return rgb
    bg = BACKGROUNDS[background]
    return tuple(round(alpha * c + (1 - alpha) * b) for c, b in zip(rgb, bg, strict=True))


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: Box, fill: tuple[int, int, int], scale: int = 1
) -> None:
    """Draw ``shape`` filling ``box = (x0, y0, x1, y1)`` (exclusive ends) onto ``draw``.

    Args:
        draw: Target drawing context (may be ``scale`` × larger than the box coordinates).
        shape: A name of :data:`~mmalign.shapeworld.world.SHAPES`.
        box: Pixel box in output coordinates; may lie partly outside the canvas (clipped).
        fill: RGB fill.
        scale: Factor from box coordinates to canvas pixels.
    """
    x0, y0, x1, y1 = (v * scale for v in box)
    if shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        return
    w, h = x1 - x0, y1 - y0
    pts = [(x0 + u * (w - 1), y0 + v * (h - 1)) for u, v in unit_polygon(shape)]
    draw.polygon(pts, fill=fill)


def render_objects(
    objects: Sequence[tuple[str, str, Box, bool]], background: str, cfg: WorldConfig, noise_key: str
) -> Image.Image:
    """Render ``(shape, colour, box, faint)`` tuples on a background.

    Args:
        objects: What to draw, in drawing order.
        background: Background name.
        cfg: World configuration (size, supersampling, faintness, noise).
        noise_key: Seeds the pixel noise (the scene or frame id).

    Returns:
        RGB image of ``cfg.image_size`` square.
    """
    ss, size = cfg.supersample, cfg.image_size
    canvas = Image.new("RGB", (size * ss, size * ss), BACKGROUNDS[background])
    draw = ImageDraw.Draw(canvas)
    for shape, color, box, faint in objects:
        draw_shape(draw, shape, box, object_rgb(color, background, faint, cfg.faint_alpha), ss)
    image = canvas if ss == 1 else canvas.resize((size, size), Image.Resampling.BOX)
    if cfg.pixel_noise > 0:
        rng = np.random.default_rng(stable_seed("pixel-noise", noise_key))
        arr = np.asarray(image, dtype=np.float32) + rng.normal(0.0, cfg.pixel_noise, (size, size, 3))
        image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    return image


def render_scene(scene: Scene, cfg: WorldConfig) -> Image.Image:
    """Render an image scene (noise partners are annotation only and never drawn).

    Args:
        scene: The scene graph.
        cfg: The configuration the scene was sampled with.

    Returns:
        RGB ``PIL.Image`` of ``cfg.image_size × cfg.image_size``; deterministic.
    """
    objects = [(o.shape, o.color, o.box, o.faint) for o in scene.objects]
    return render_objects(objects, scene.background, cfg, scene.id)
