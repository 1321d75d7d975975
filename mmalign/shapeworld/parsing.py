"""Parsing free model text over ShapeWorld's closed vocabulary: mentions, numbers, letters.

Yes/no answers are read by :func:`mmalign.eval.answers.answer_yes_no` (the ``strict`` parser),
re-exported here.

What :func:`parse_mentions` handles (and what it does not):
- shape nouns in singular and plural (``circle``/``circles``, ``cross``/``crosses``); every
  occurrence is one mention (so ``a circle ... the circle`` is two);
- attributes in the contiguous words right before the noun (``two large red squares`` → count 2,
  size large, colour red; the closest colour wins in ``red and blue circles``) or after it as a
  predicate (``the circle is red``); ``colour``/``color``, ``grey``/``gray`` spellings, ``big`` /
  ``tiny`` / ``little`` as size words, hyphens (``top-left``) are all normalised;
- negation: a cue (``no``, ``not``, ``without``, ``none``, ``never``, ``nor``, ``neither``,
  ``isn't`` …) opens a scope that closes at punctuation or at ``but``/``and``/``while``/
  ``whereas``/``although``/``however``; shapes inside a scope are *not* mentions (``there is no
  star or heart`` mentions nothing; ``no star, but a circle`` mentions the circle);
- not handled: coreference (``it``), synonyms outside the vocabulary (``ball``, ``box``), the verb
  "to cross" (always read as the shape), hedges (``maybe a star`` counts as a mention).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmalign.eval.answers import answer_yes_no as answer_yes_no  # re-exported: the strict parser
from mmalign.shapeworld.captions import NUMBER_WORDS, plural
from mmalign.shapeworld.vocab import COLORS, SHAPES

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+|[.,;:!?()]")
PUNCT = frozenset(".,;:!?()")
SHAPE_FORMS: dict[str, str] = {**{s: s for s in SHAPES}, **{plural(s): s for s in SHAPES}}
COLOR_FORMS: dict[str, str] = {**{c: c for c in COLORS}, "grey": "gray", "gray": "gray"}
SIZE_FORMS: dict[str, str] = {
    "small": "small",
    "large": "large",
    "big": "large",
    "tiny": "small",
    "little": "small",
}
NUMBER_FORMS: dict[str, int] = {**{w: i for i, w in enumerate(NUMBER_WORDS)}, "a": 1, "an": 1, "single": 1}
NEGATIONS = frozenset(
    "no not without none never nor neither nothing isn't aren't doesn't don't can't cannot wasn't weren't".split()
)
SCOPE_END = frozenset("but and while whereas although however though yet".split())


@dataclass(frozen=True)
class Mention:
    """One positive mention of a shape, with the attributes attached to it (None when unstated)."""

    shape: str
    color: str | None = None
    size: str | None = None
    count: int | None = None
    index: int = 0


def tokenize(text: str) -> list[str]:
    """Lower-case word, number and punctuation tokens (hyphens and slashes split words)."""
    text = text.lower().replace("’", "'").replace("-", " ").replace("/", " ")
    return _TOKEN.findall(text)


def _negated_positions(tokens: list[str]) -> set[int]:
    negated, inside = set(), False
    for i, tok in enumerate(tokens):
        if tok in PUNCT or tok in SCOPE_END:
            inside = False
        elif tok in NEGATIONS:
            inside = True
        elif inside:
            negated.add(i)
    return negated


def parse_mentions(text: str) -> list[Mention]:
    """Positive shape mentions in free text, in order (see module docstring for what is handled)."""
    tokens = tokenize(text)
    negated = _negated_positions(tokens)
    out = []
    for i, tok in enumerate(tokens):
        shape = SHAPE_FORMS.get(tok)
        if shape is None or i in negated:
            continue
        color = size = count = None
        j = i - 1
        while j >= 0 and (
            tokens[j] in COLOR_FORMS
            or tokens[j] in SIZE_FORMS
            or tokens[j] in NUMBER_FORMS
            or tokens[j] in ("the", "other", "another")
            or tokens[j].isdigit()
        ):
            tok_j = tokens[j]
            if tok_j in COLOR_FORMS and color is None:
                color = COLOR_FORMS[tok_j]
            elif tok_j in SIZE_FORMS and size is None:
                size = SIZE_FORMS[tok_j]
            elif count is None and (tok_j.isdigit() or tok_j in NUMBER_FORMS):
                count = int(tok_j) if tok_j.isdigit() else NUMBER_FORMS[tok_j]
            j -= 1
        if color is None and i + 2 < len(tokens) and tokens[i + 1] in ("is", "are"):
            k = i + 2
            if tokens[k] in SIZE_FORMS and k + 1 < len(tokens) and tokens[k + 1] == "and":
                k += 2
            color = COLOR_FORMS.get(tokens[k])
        out.append(Mention(shape, color, size, count, i))
    return out


def parse_number(text: str) -> int | None:
    """The first number in ``text`` (digits or words up to sixteen); ``no``/``none`` → 0; ``a``/``an`` → 1 last."""
    tokens = tokenize(text)
    for tok in tokens:
        if tok.isdigit():
            return int(tok)
        if tok in NUMBER_FORMS and tok not in ("a", "an"):
            return NUMBER_FORMS[tok]
        if tok in ("no", "none"):
            return 0
    return 1 if any(t in ("a", "an") for t in tokens) else None


def parse_letter(text: str, options: list[str] | None = None, letters: str = "ABCD") -> str | None:
    """Option letter chosen in ``text``: ``B``, ``(B)``, ``B. circle``, ``Answer: B``; else the one option named."""
    stripped = text.strip()
    match = re.match(rf"^\(?([{letters}])(?:[.):\s]|$)", stripped)
    if match is None:
        match = re.search(rf"(?:answer|option)(?: is)?:?\s*\(?([{letters}])\b", stripped, re.IGNORECASE)
    if match is not None:
        return match.group(1).upper()
    if options:
        words = set(tokenize(text))
        named = [letters[i] for i, opt in enumerate(options) if set(tokenize(opt)) <= words]
        if len(named) == 1:
            return named[0]
    return None


def colors_in(text: str) -> set[str]:
    """Colour words named in ``text`` (normalised)."""
    return {COLOR_FORMS[t] for t in tokenize(text) if t in COLOR_FORMS}
