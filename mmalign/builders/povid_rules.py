"""POVID's hallucination injection by rules: edit a ground-truth answer so that it becomes wrong.

POVID (https://arxiv.org/abs/2402.11411) asks GPT-4V to add objects that commonly co-occur with
present ones, alter attributes and logical relations, and corrupt a reasoning step. Here each kind
is a deterministic text edit (given the rng), and the result says what was injected:

* ``object`` — the absent object most likely given a present one, P(b | a) mined from the corpus
  itself (:class:`CooccurrenceStats`), with its most frequent colour: ``There is also a red circle
  next to the star.`` (a ``There are N objects.`` sentence is bumped to N + 1 to stay consistent);
* ``attribute`` — the first colour word becomes the corpus' most frequent other colour of that
  object (else a random other colour); without colours, ``small``/``large`` is swapped;
* ``relation`` — the first of left/right, above/below, top/bottom is flipped;
* ``count`` — the first number ≥ 2 (digits or words) moves by one (never below 2);
* ``yes_no`` — a yes/no answer is inverted (``Yes.`` → ``No.``);
* ``reasoning`` — in an answer with a reasoning cue (because, so, therefore, first, step …) and at
  least two sentences, one step before the conclusion is corrupted by the first applicable edit
  above (count, attribute, relation); the conclusion is left as it was.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmalign.builders.scene import COLOR_WORDS, SceneDesc, with_article
from mmalign.shapeworld.captions import NUMBER_WORDS
from mmalign.shapeworld.vocab import COLORS

INJECTION_KINDS: tuple[str, ...] = ("object", "attribute", "relation", "count", "yes_no", "reasoning")
FLIPS: Mapping[str, str] = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "top": "bottom",
    "bottom": "top",
}
CUES = re.compile(r"\b(because|so|therefore|thus|hence|since|first|then|step|which means)\b", re.I)
_SENTENCE = re.compile(r"[^.!?]+[.!?]*\s*")
_COUNT_SENTENCE = re.compile(r"There (?:is|are) (\d+) objects?\.")
_NUMBER = re.compile(r"\b(\d+|" + "|".join(NUMBER_WORDS[2:11]) + r")\b", re.I)
_YES_NO = re.compile(r"^\s*(yes|no)\b", re.I)


@dataclass(frozen=True)
class Injection:
    """A hallucinated answer, the kind of edit and what changed (``detail``)."""

    kind: str
    text: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class CooccurrenceStats:
    """Object and pair counts over a corpus: P(b | a) = pairs[a][b] / images[a]; colour counts per object."""

    images: Counter[str] = field(default_factory=Counter)
    pairs: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    colors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, scene: SceneDesc) -> None:
        """Count one image."""
        names = scene.names()
        for a in names:
            self.images[a] += 1
            for b in names - {a}:
                self.pairs[a][b] += 1
        for t in scene.things:
            if "color" in t.attrs:
                self.colors[t.name][t.attrs["color"]] += 1

    @classmethod
    def from_scenes(cls, scenes: Iterable[SceneDesc]) -> CooccurrenceStats:
        """Mine a corpus."""
        stats = cls()
        for s in scenes:
            stats.add(s)
        return stats

    def p(self, b: str, a: str) -> float:
        """P(b present | a present)."""
        return self.pairs[a][b] / self.images[a] if self.images[a] else 0.0

    def likely_partner(
        self, present: Iterable[str], absent_ok: Iterable[str] | None = None
    ) -> tuple[str, str, float] | None:
        """``(a, b, P(b|a))`` maximising P(b | a) over present a and absent b (ties: alphabetical)."""
        present = set(present)
        best: tuple[float, str, str] | None = None
        for a in sorted(present):
            for b, _ in sorted(self.pairs[a].items()):
                if b in present or (absent_ok is not None and b not in absent_ok):
                    continue
                key = (self.p(b, a), a, b)
                if best is None or key[0] > best[0]:
                    best = key
        return None if best is None else (best[1], best[2], best[0])

    def common_color(self, name: str, exclude: str | None = None) -> str | None:
        """The most frequent colour of ``name`` other than ``exclude``."""
        for color, _ in sorted(self.colors[name].items(), key=lambda kv: (-kv[1], kv[0])):
            if color != exclude:
                return color
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {
            "images": dict(self.images),
            "pairs": {k: dict(v) for k, v in self.pairs.items()},
            "colors": {k: dict(v) for k, v in self.colors.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CooccurrenceStats:
        """Inverse of :meth:`to_dict`."""
        stats = cls()
        stats.images.update(data["images"])
        for k, v in data["pairs"].items():
            stats.pairs[k].update(v)
        for k, v in data["colors"].items():
            stats.colors[k].update(v)
        return stats


def _sub_first(pattern: re.Pattern[str], text: str, repl: str) -> str:
    return pattern.sub(repl, text, count=1)


def inject_object(
    answer: str, scene: SceneDesc, stats: CooccurrenceStats, rng: random.Random
) -> Injection | None:
    """Add the absent object that most often co-occurs with a present one."""
    found = stats.likely_partner(scene.names())
    if found is None or len(answer.split()) < 4:
        return None
    a, b, p = found
    color = stats.common_color(b)
    phrase = f"{color} {b}" if color else b
    text = answer.rstrip()
    m = _COUNT_SENTENCE.search(text)
    if m:
        n = int(m.group(1)) + 1
        text = text[: m.start()] + f"There are {n} objects." + text[m.end() :]
    sep = "" if text.endswith((".", "!", "?")) else "."
    text = f"{text}{sep} There is also {with_article(phrase)} next to the {a}."
    return Injection("object", text, {"added": b, "color": color, "because_of": a, "p": round(p, 4)})


def inject_attribute(
    answer: str,
    scene: SceneDesc,
    stats: CooccurrenceStats,
    rng: random.Random,
    colors: Sequence[str] = COLORS,
) -> Injection | None:
    """Change the first colour word (or, without colours, the first size word)."""
    words = list(re.finditer(r"\b[a-z]+\b", answer))
    for i, m in enumerate(words):
        if m.group() in COLOR_WORDS and m.group() not in ("dark", "light"):
            noun = words[i + 1].group() if i + 1 < len(words) else ""
            new = stats.common_color(noun, exclude=m.group()) if noun else None
            if new is None:
                new = rng.choice([c for c in colors if c != m.group()])
            text = answer[: m.start()] + new + answer[m.end() :]
            return Injection("attribute", text, {"from": m.group(), "to": new, "object": noun})
    for m in words:
        if m.group() in ("small", "large"):
            new = "large" if m.group() == "small" else "small"
            return Injection(
                "attribute", answer[: m.start()] + new + answer[m.end() :], {"from": m.group(), "to": new}
            )
    return None


def inject_relation(
    answer: str, scene: SceneDesc, stats: CooccurrenceStats, rng: random.Random
) -> Injection | None:
    """Flip the first spatial word (left/right, above/below, top/bottom)."""
    m = re.search(r"\b(" + "|".join(FLIPS) + r")\b", answer, re.I)
    if m is None:
        return None
    word = m.group()
    new = FLIPS[word.lower()]
    new = new.capitalize() if word[0].isupper() else new
    return Injection("relation", answer[: m.start()] + new + answer[m.end() :], {"from": word, "to": new})


def inject_count(
    answer: str, scene: SceneDesc, stats: CooccurrenceStats, rng: random.Random
) -> Injection | None:
    """Move the first number ≥ 2 by one (down only when it stays ≥ 2)."""
    found = [
        (m, int(m.group()) if m.group().isdigit() else NUMBER_WORDS.index(m.group().lower()))
        for m in _NUMBER.finditer(answer)
    ]
    found = [(m, n) for m, n in found if n >= 2]
    if not found:
        return None
    m, n = found[0]
    word = m.group()
    new_n = n + 1 if n == 2 or rng.random() < 0.5 else n - 1
    new = str(new_n) if word.isdigit() else NUMBER_WORDS[new_n] if new_n < len(NUMBER_WORDS) else str(new_n)
    if word[0].isupper():
        new = new.capitalize()
    return Injection("count", answer[: m.start()] + new + answer[m.end() :], {"from": n, "to": new_n})


def inject_yes_no(
    answer: str, scene: SceneDesc, stats: CooccurrenceStats, rng: random.Random
) -> Injection | None:
    """Invert a yes/no answer (only its first word: ``Yes, there is …`` → ``No, there is …``)."""
    m = _YES_NO.match(answer)
    if m is None:
        return None
    word = m.group(1)
    new = "no" if word.lower() == "yes" else "yes"
    new = new.capitalize() if word[0].isupper() else new
    return Injection("yes_no", answer[: m.start(1)] + new + answer[m.end(1) :], {"from": word, "to": new})


def inject_reasoning(
    answer: str, scene: SceneDesc, stats: CooccurrenceStats, rng: random.Random
) -> Injection | None:
    """Corrupt one step before the conclusion of a reasoning answer (first step that an edit applies to)."""
    sentences = _SENTENCE.findall(answer)
    if len(sentences) < 2 or not CUES.search(answer):
        return None
    for i, s in enumerate(sentences[:-1]):
        for edit in (inject_count, inject_attribute, inject_relation):
            inj = edit(s, scene, stats, rng)
            if inj is not None:
                text = "".join(sentences[:i]) + inj.text + "".join(sentences[i + 1 :])
                return Injection("reasoning", text, {"step": i, "edit": inj.kind, **inj.detail})
    return None


INJECTORS = {
    "object": inject_object,
    "attribute": inject_attribute,
    "relation": inject_relation,
    "count": inject_count,
    "yes_no": inject_yes_no,
    "reasoning": inject_reasoning,
}


def injections(
    answer: str,
    scene: SceneDesc,
    stats: CooccurrenceStats,
    rng: random.Random,
    kinds: Sequence[str] = INJECTION_KINDS,
) -> list[Injection]:
    """Every applicable injection of ``kinds`` (in that order) that changes the answer."""
    out = []
    for kind in kinds:
        inj = INJECTORS[kind](answer, scene, stats, rng)
        if inj is not None and inj.text != answer:
            out.append(inj)
    return out
