"""One description of an image for every rule-based generator: named things with attributes and boxes.

Parsed from (see :func:`scene_from_record`):

* a ShapeWorld scene graph (``scenes/*.jsonl``: ``kind: image``, ``objects`` with shape, colour,
  size, box) — exact;
* dense captions with boxes: ShapeWorld's ``dense/*.jsonl`` (``regions: [{caption, box: [x, y, w,
  h]}]``) or Visual-Genome style (``regions: [{phrase, x, y, width, height}]``); the caption's
  last word is the object, known colour and size words before it are its attributes;
* LLaVA records: an ``objects`` list (strings like ``"red circle"`` or ``{name, attrs, box}``), else
  the ShapeWorld objects mentioned in the assistant turns (:func:`mmalign.shapeworld.parsing.parse_mentions`;
  no boxes, so no position).

Positions are thirds of the image by the box centre (``top left`` … ``bottom right``), which equals
ShapeWorld's cell words on its 3×3 grid.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmalign.data.formats import RecordError
from mmalign.shapeworld.captions import article, plural
from mmalign.shapeworld.parsing import parse_mentions
from mmalign.shapeworld.vocab import COLORS, SIZES

COLOR_WORDS: tuple[str, ...] = (
    *COLORS, "black", "brown", "gray", "grey", "pink", "gold", "silver", "beige", "tan", "dark", "light",
)  # fmt: skip
SIZE_WORDS: tuple[str, ...] = (*SIZES, "big", "tiny", "little", "huge", "tall", "short")
ATTR_ORDER: tuple[str, ...] = ("size", "color")


@dataclass(frozen=True)
class Thing:
    """One object: a noun, attributes by category (``color``, ``size``), an ``(x, y, w, h)`` box or None."""

    name: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    box: tuple[float, float, float, float] | None = None

    def describe(self, attrs: Sequence[str] = ATTR_ORDER) -> str:
        """``large red circle`` (the given attribute categories, in order, then the name)."""
        return " ".join([self.attrs[a] for a in attrs if a in self.attrs] + [self.name])


@dataclass
class SceneDesc:
    """An image as a list of things; ``width``/``height`` in the boxes' unit (None if no boxes)."""

    id: str
    image: str | None
    things: list[Thing]
    width: float | None = None
    height: float | None = None

    def names(self) -> set[str]:
        """Object names present."""
        return {t.name for t in self.things}

    def count(self, name: str) -> int:
        """How many things are called ``name``."""
        return sum(t.name == name for t in self.things)

    def unique(self) -> list[Thing]:
        """Things whose name occurs once (so ``the <name>`` refers to one object)."""
        counts = Counter(t.name for t in self.things)
        return [t for t in self.things if counts[t.name] == 1]

    def position(self, thing: Thing) -> str | None:
        """``top left``, ``left``, ``center`` … from the box centre (None without box or size)."""
        if thing.box is None or not self.width or not self.height:
            return None
        x, y, w, h = thing.box
        col = min(2, int(3 * (x + w / 2) / self.width))
        row = min(2, int(3 * (y + h / 2) / self.height))
        r, c = ("top", "middle", "bottom")[row], ("left", "center", "right")[col]
        if r == "middle":
            return "center" if c == "center" else c
        return r if c == "center" else f"{r} {c}"


def position_phrase(words: str) -> str:
    """``at the top left`` / ``on the left`` / ``in the center``."""
    if words == "center":
        return "in the center"
    return f"on the {words}" if words in ("left", "right") else f"at the {words}"


def with_article(phrase: str) -> str:
    """``a red circle`` / ``an orange star``."""
    return f"{article(phrase)} {phrase}"


def listing(phrases: Sequence[str]) -> str:
    """``a, b and c``."""
    if not phrases:
        return "nothing"
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def count_phrase(n: int, name: str) -> str:
    """``one circle`` / ``3 circles`` / ``no circles``."""
    if n == 0:
        return f"no {plural(name)}"
    return f"one {name}" if n == 1 else f"{n} {plural(name)}"


def parse_phrase(phrase: str) -> Thing:
    """``"large red circle"`` → ``Thing("circle", {"size": "large", "color": "red"})``."""
    words = phrase.lower().replace("-", " ").split()
    if not words:
        raise ValueError("empty region caption")
    attrs: dict[str, str] = {}
    rest: list[str] = []
    for w in words[:-1]:
        if w in COLOR_WORDS and "color" not in attrs:
            attrs["color"] = w
        elif w in SIZE_WORDS and "size" not in attrs:
            attrs["size"] = w
        elif w not in ("a", "an", "the"):
            rest.append(w)
    return Thing(" ".join([*rest, words[-1]]), attrs)


def _box(value: Any, where: str) -> tuple[float, float, float, float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(v, (int, float)) for v in value)
    ):
        raise RecordError(f"{where}: a box must be [x, y, width, height] numbers, got {value!r}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _region(reg: Any, where: str) -> Thing:
    if not isinstance(reg, dict):
        raise RecordError(f"{where}: a region must be an object")
    text = reg.get("caption", reg.get("phrase"))
    if not isinstance(text, str) or not text.strip():
        raise RecordError(f"{where}: a region needs a non-empty 'caption' (or 'phrase')")
    if "box" in reg:
        box = _box(reg["box"], where)
    elif all(k in reg for k in ("x", "y", "width", "height")):
        box = _box([reg["x"], reg["y"], reg["width"], reg["height"]], where)
    else:
        raise RecordError(f"{where}: a region needs 'box' [x, y, w, h] or x/y/width/height")
    thing = parse_phrase(text)
    return Thing(thing.name, thing.attrs, box)


def _objects_field(objects: Any, where: str) -> list[Thing]:
    if not isinstance(objects, list):
        raise RecordError(f"{where}: 'objects' must be a list")
    out = []
    for o in objects:
        if isinstance(o, str):
            out.append(parse_phrase(o))
        elif isinstance(o, dict) and isinstance(o.get("name"), str):
            box = _box(o["box"], where) if o.get("box") is not None else None
            out.append(Thing(o["name"], dict(o.get("attrs", {})), box))
        elif isinstance(o, dict) and isinstance(o.get("shape"), str):  # a ShapeWorld object
            x0, y0, x1, y1 = _box(o["box"], where)
            out.append(
                Thing(o["shape"], {"size": o["size"], "color": o["color"]}, (x0, y0, x1 - x0, y1 - y0))
            )
        else:
            raise RecordError(f"{where}: an object must be a phrase or {{name, attrs, box}}, got {o!r}")
    return out


def _llava_things(rec: Mapping[str, Any], where: str) -> list[Thing]:
    convs = rec.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise RecordError(f"{where}: missing or empty 'conversations'")
    things = []
    for turn in convs:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordError(f"{where}: every turn needs a string 'value'")
        if turn.get("from") in ("gpt", "assistant"):
            for m in parse_mentions(turn["value"]):
                attrs = {k: v for k, v in (("size", m.size), ("color", m.color)) if v}
                things += [Thing(m.shape, attrs)] * max(1, m.count or 1)
    return things


def scene_from_record(rec: Mapping[str, Any], where: str, image_size: float | None = None) -> SceneDesc:
    """Normalise a scene-graph, dense-caption or LLaVA record (module docstring) into a :class:`SceneDesc`.

    Args:
        image_size: side of square images when the record gives no ``width``/``height`` (ShapeWorld).

    Raises:
        RecordError: the record is none of these, naming ``where``.
    """
    rid = str(rec.get("id", rec.get("image_id", where)))
    image = rec.get("image")
    if image is not None and not isinstance(image, str):
        raise RecordError(f"{where}: 'image' must be a path string")
    width = rec.get("width", image_size)
    height = rec.get("height", image_size)
    if "objects" in rec and rec.get("kind", "image") == "image" and "conversations" not in rec:
        things = _objects_field(rec["objects"], where)
    elif "regions" in rec:
        if not isinstance(rec["regions"], list):
            raise RecordError(f"{where}: 'regions' must be a list")
        things = [_region(r, f"{where} region {i}") for i, r in enumerate(rec["regions"])]
    elif "conversations" in rec:
        things = _objects_field(rec["objects"], where) if "objects" in rec else _llava_things(rec, where)
    elif rec.get("kind") == "video":
        raise RecordError(f"{where}: a video scene; this builder takes images")
    else:
        raise RecordError(
            f"{where}: not a scene graph ('objects'), dense captions ('regions') or LLaVA record "
            f"('conversations'); keys {sorted(rec)}"
        )
    if width is None and any(t.box for t in things):
        width = max(t.box[0] + t.box[2] for t in things if t.box)
        height = max(t.box[1] + t.box[3] for t in things if t.box)
    return SceneDesc(rid, image, things, width, height)
