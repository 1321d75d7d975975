"""POPE on ShapeWorld: balanced yes/no existence probes and their metrics.

POPE (Li et al., 2023, https://arxiv.org/abs/2305.10355) asks ``Is there a <object> in the
image?`` about present objects (label ``yes``) and as many absent ones (label ``no``), chosen by
split: **random** (uniform over absent shapes), **popular** (the absent shapes most frequent in the
corpus) or **adversarial** (the absent shapes that co-occur most with the present ones). On
ShapeWorld the adversarial negatives of a star-without-circle scene are led by ``circle``.
The metrics, :func:`pope_metrics`, live in :mod:`mmalign.eval.answers` (re-exported here).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmalign.eval.answers import pope_metrics as pope_metrics  # re-exported; it lives with the parsers
from mmalign.shapeworld.world import SHAPES, Scene

SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")


@dataclass
class CorpusStats:
    """Image-level shape statistics of a corpus.

    Attributes:
        counts: Shape → number of images containing it.
        cooc: ``cooc[a][b]`` = number of images containing both ``a`` and ``b`` (``a != b``).
    """

    counts: dict[str, int] = field(default_factory=dict)
    cooc: dict[str, dict[str, int]] = field(default_factory=dict)


def compute_corpus_stats(scenes: Sequence[Scene]) -> CorpusStats:
    """Count images per shape and per pair of co-occurring shapes."""
    stats = CorpusStats()
    for scene in scenes:
        present = sorted(scene.shapes())
        for a in present:
            stats.counts[a] = stats.counts.get(a, 0) + 1
            row = stats.cooc.setdefault(a, {})
            for b in present:
                if b != a:
                    row[b] = row.get(b, 0) + 1
    return stats


def _negatives(
    split: str,
    present: set[str],
    absent: list[str],
    k: int,
    rng: random.Random,
    stats: CorpusStats,
    order: list[str],
) -> list[str]:
    if split == "random":
        return rng.sample(absent, k)
    if split == "popular":
        ranked = sorted(absent, key=lambda s: (-stats.counts.get(s, 0), order.index(s)))
    else:
        ranked = sorted(
            absent,
            key=lambda s: (
                -sum(stats.cooc.get(p, {}).get(s, 0) for p in present),
                -stats.counts.get(s, 0),
                order.index(s),
            ),
        )
    return ranked[:k]


def pope_probes(
    scenes: Sequence[Scene],
    rng: random.Random,
    n_per_image: int = 6,
    split: str = "random",
    corpus_stats: CorpusStats | None = None,
    shapes: Sequence[str] = SHAPES,
    image_prefix: str = "images/",
    first_question_id: int = 1,
) -> list[dict]:
    """Balanced POPE yes/no probes for image scenes.

    Per image, ``k = min(n_per_image // 2, #present shapes, #absent shapes)`` positives (a random
    sample of the present distinct shapes) and ``k`` negatives chosen by ``split``; shuffled within
    the image. Ties in popular/adversarial rankings break by corpus count, then vocabulary order.

    Args:
        scenes: True scene graphs (noise partners are ignored: POPE is evaluation).
        rng: Source of the random choices.
        n_per_image: Probes per image (at most; fewer when an image has few present shapes).
        split: ``random``, ``popular`` or ``adversarial``.
        corpus_stats: Statistics for popular/adversarial ranking (POPE uses the annotated
            corpus; pass the training split's); computed from ``scenes`` when None.
        shapes: Vocabulary of shapes that may be asked about.
        image_prefix: Prefix of the ``image`` field (``images/`` + id + ``.png``).
        first_question_id: ``question_id`` of the first probe.

    Returns:
        Records ``{"question_id", "image", "text", "label", "shape"}`` (POPE's jsonl fields plus
        the queried shape).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown POPE split {split!r}; choose from {SPLITS}")
    stats = corpus_stats if corpus_stats is not None else compute_corpus_stats(scenes)
    order, out, qid = list(shapes), [], first_question_id
    for scene in scenes:
        present = scene.shapes() & set(order)
        absent = [s for s in order if s not in present]
        k = min(n_per_image // 2, len(present), len(absent))
        positives = rng.sample(sorted(present, key=order.index), k)
        negatives = _negatives(split, present, absent, k, rng, stats, order)
        probes = [(s, "yes") for s in positives] + [(s, "no") for s in negatives]
        rng.shuffle(probes)
        for shape, label in probes:
            art = "an" if shape[0] in "aeiou" else "a"
            out.append(
                {
                    "question_id": qid,
                    "image": f"{image_prefix}{scene.id}.png",
                    "text": f"Is there {art} {shape} in the image?",
                    "label": label,
                    "shape": shape,
                }
            )
            qid += 1
    return out
