"""Reading free-text yes/no answers, and POPE's metrics over them.

Three parsers, chosen by name (:data:`PARSERS`); each returns True (yes), False (no) or None when
the answer *fits neither* pattern:

- ``reference`` (the default): the rule of POPE's own evaluation script (``evaluate.py`` of
  https://github.com/RUCAIBox/POPE): keep the text before the first ``.``, and the answer is *no*
  when that first sentence holds a negation word, *yes* otherwise. The script compares words
  exactly (``'No' in words or 'not' in words or 'no' in words`` after removing commas and
  splitting on single spaces), so ``Not at all``, ``NO``, ``No!`` and ``no\\n`` read as yes there.
  Departures, all of them ways of reading the same words: case does not matter, words are split
  at any punctuation or white space, and the contracted forms of *not* count as *not*
  (``isn't``, ``don't``, ``can't`` …, ``cannot``). ``none``, ``never``, ``nothing``, ``nope`` are
  not negation words under this rule (as in the script).
- ``reference-exact``: the script's comparison character for character, to reproduce published
  numbers to the last probe.
- ``strict``: a yes/no word must be present. The first decisive word wins: ``yes``/``yeah``/
  ``yep``/``yup`` mean yes; a negation (``no``, ``not``, ``n't``, ``none``, ``never``, ``nothing``,
  ``nope``, ``cannot``, ``false``, ``incorrect`` …) means no; an affirming adverb (``certainly``,
  ``sure``, ``indeed``, ``absolutely``, ``definitely``, ``of course``, ``true``, ``correct``)
  means yes unless a negation follows in the same sentence (``Certainly not.``, ``Indeed, there
  is no dog.`` are no). ``There is a dog in the image.`` fits neither.

*Fits neither* for the reference rules: the first sentence holds no negation word and no
affirming word (``yes``, ``sure``, ``certainly``, ``true`` … as above), so the rule reads it as
yes only by default: ``There is a dog.``, ``Nope.``, an empty answer. :func:`pope_metrics` counts
these (``n_unparseable``) whatever the parser, and scores them as the parser's default
(:data:`UNPARSEABLE_AS`: yes for the reference rules, which is what the script does; no for
``strict``, so that evasive text is never rewarded) unless told otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.!?;]")
SENTENCE_END = frozenset(".!?;")
STRONG_YES = frozenset("yes yeah yep yup yea".split())
AFFIRMING = frozenset("certainly sure surely indeed absolutely definitely true correct affirmative".split())
STRICT_NEGATIONS = frozenset("no nope nah not none never nothing nobody cannot false incorrect".split())
REFERENCE_NEGATIONS = frozenset(("no", "not", "cannot"))
REFERENCE_EXACT_NEGATIONS = frozenset(("No", "not", "no"))


def words(text: str) -> list[str]:
    """Lower-case words (contractions kept whole: ``isn't``) and sentence ends ``. ! ? ;``."""
    return _WORD.findall(text.lower().replace("’", "'"))


def _not_contraction(word: str) -> bool:
    return word.endswith("n't")


def _affirming(tokens: list[str], i: int) -> bool:
    """``tokens[i]`` affirms: an affirming adverb, or ``course`` in ``of course``."""
    return tokens[i] in AFFIRMING or (tokens[i] == "course" and i > 0 and tokens[i - 1] == "of")


def first_sentence(text: str) -> str:
    """The text before the first ``.`` (all of it when there is none), as POPE's script keeps."""
    return text.split(".")[0]


def reference_yes_no(text: str) -> bool | None:
    """POPE's rule, case- and punctuation-insensitive (module docstring): False when the first
    sentence has a negation word, True when it has an affirming word, else None (read as yes)."""
    tokens = words(first_sentence(text))
    if any(t in REFERENCE_NEGATIONS or _not_contraction(t) for t in tokens):
        return False
    return True if any(t in STRONG_YES or _affirming(tokens, i) for i, t in enumerate(tokens)) else None


def reference_exact_yes_no(text: str) -> bool | None:
    """POPE's ``evaluate.py`` rule character for character: False when a space-separated word of
    the first sentence (commas removed) is exactly ``No``, ``not`` or ``no``; otherwise True when an
    affirming word is there (compared case-insensitively, for the count of answers that fit
    neither), else None (read as yes, as the script does)."""
    sentence = first_sentence(text).replace(",", "")
    if any(w in REFERENCE_EXACT_NEGATIONS for w in sentence.split(" ")):
        return False
    tokens = words(sentence)
    return True if any(t in STRONG_YES or _affirming(tokens, i) for i, t in enumerate(tokens)) else None


def answer_yes_no(text: str) -> bool | None:
    """The ``strict`` parser (module docstring): True for yes, False for no, None for neither.

    ``Yes, there is a star`` → True; ``There is no star`` → False; ``Certainly not.`` → False;
    ``Sure, a star.`` → True; ``A star.`` → None.
    """
    tokens = words(text)
    for i, tok in enumerate(tokens):
        if tok in STRONG_YES:
            return True
        if tok in STRICT_NEGATIONS or _not_contraction(tok):
            return False
        if _affirming(tokens, i):
            for later in tokens[i + 1 :]:
                if later in SENTENCE_END or later in STRONG_YES:
                    break
                if later in STRICT_NEGATIONS or _not_contraction(later):
                    return False
            return True
    return None


PARSERS: dict[str, Callable[[str], bool | None]] = {
    "reference": reference_yes_no,
    "reference-exact": reference_exact_yes_no,
    "strict": answer_yes_no,
}
UNPARSEABLE_AS: dict[str, str] = {"reference": "yes", "reference-exact": "yes", "strict": "no"}


def check_parser(parser: str, unparseable: str | None = None) -> str:
    """The yes/no reading given to answers that fit neither pattern, after checking both names.

    Raises:
        ValueError: an unknown parser, or ``unparseable`` other than yes/no/None.
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown yes/no parser {parser!r}; choose from {', '.join(PARSERS)}")
    if unparseable not in (None, "yes", "no"):
        raise ValueError(f"unparseable must be 'yes' or 'no', got {unparseable!r}")
    return unparseable or UNPARSEABLE_AS[parser]


def read_yes_no(text: str, parser: str = "reference", unparseable: str | None = None) -> tuple[str, bool]:
    """``("yes" | "no", fits)``: the reading used for scoring, and whether the answer fit a pattern.

    Raises:
        ValueError: see :func:`check_parser`.
    """
    default = check_parser(parser, unparseable)
    parsed = PARSERS[parser](text)
    if parsed is None:
        return default, False
    return ("yes" if parsed else "no"), True


def pope_metrics(
    labels: Sequence[str],
    answers: Sequence[str],
    parser: str = "reference",
    unparseable: str | None = None,
) -> dict[str, float]:
    """POPE's metrics (Li et al., 2023, https://arxiv.org/abs/2305.10355), ``yes`` positive.

    Args:
        labels: ``"yes"``/``"no"`` per probe.
        answers: Model answers, free text.
        parser: ``reference`` (default), ``reference-exact`` or ``strict`` (module docstring).
        unparseable: What an answer fitting neither pattern counts as; None: the parser's default
            (:data:`UNPARSEABLE_AS`).

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` (share of predicted yes), and
        counts ``n``, ``tp``, ``fp``, ``tn``, ``fn``, ``n_unparseable`` (answers fitting neither
        pattern) with ``unparseable_share``. Empty denominators give 0.0, as POPE's script would
        fail instead.

    Raises:
        ValueError: label and answer counts differ, a label is not yes/no, or a bad parser name.
    """
    if len(labels) != len(answers):
        raise ValueError(f"{len(labels)} labels for {len(answers)} answers")
    check_parser(parser, unparseable)
    tp = fp = tn = fn = n_unparseable = 0
    for k, (label, answer) in enumerate(zip(labels, answers, strict=True)):
        truth = label.strip().lower()
        if truth not in ("yes", "no"):
            raise ValueError(f"label {k}: must be 'yes' or 'no', got {label!r}")
        reading, fits = read_yes_no(answer, parser, unparseable)
        n_unparseable += not fits
        said, want = reading == "yes", truth == "yes"
        tp += said and want
        fp += said and not want
        tn += (not said) and not want
        fn += (not said) and want
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "n": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_unparseable": n_unparseable,
        "unparseable_share": n_unparseable / n if n else 0.0,
    }
