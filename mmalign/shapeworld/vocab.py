"""ShapeWorld's closed vocabulary (shapes, colours, sizes, backgrounds, relations) and a stable seed helper."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from mmalign.utils import IGNORE_INDEX as IGNORE_INDEX  # re-exported: it lives in mmalign.utils
from mmalign.utils import stable_seed as stable_seed  # re-exported

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross", "heart")
"""Closed shape vocabulary; class index = position in this tuple."""

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
"""Closed colour vocabulary (names); class index = position. RGB values in :data:`COLOR_RGB`."""

COLOR_RGB: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (230, 40, 40),
        "green": (40, 200, 60),
        "blue": (60, 110, 255),
        "yellow": (240, 230, 40),
        "purple": (170, 70, 230),
        "orange": (255, 140, 0),
        "cyan": (40, 220, 230),
        "white": (245, 245, 245),
    }
)

SIZES: tuple[str, ...] = ("small", "large")

BACKGROUNDS: Mapping[str, tuple[int, int, int]] = MappingProxyType(
    {"black": (12, 12, 12), "charcoal": (44, 44, 48), "navy": (16, 22, 52)}
)
"""Dark backgrounds, far from every object colour."""

"""Target value for shape/colour/size of an empty cell (``torch.nn.CrossEntropyLoss`` default)."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "next to")
