"""Held-out probes of prior-driven hallucination: trigger-without-partner scenes and controls.

For every co-occurrence rule ``trigger -> partner`` of the world, a **violating** scene shows the
trigger but not its partner — the situation in which a model that learned the prior (from the
co-occurrence itself, or from training text that names the partner although it is absent) says
"yes" to the partner or mentions it in a caption. A **control** scene shows neither the trigger
nor the partner: it measures the base rate of false "yes" / mentions of the same partner word.
Both groups are sampled from the world without the co-occurrence rules (so the partner is never
forced in) and kept by rejection, with scene ids ``prior_<seed>_<group>_<k>``.

Each probe record: ``{"scene_id", "image", "group": "violating"|"control", "trigger", "partner",
"question", "scene": <scene graph>}``; the question asks about the partner.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

from mmalign.shapeworld.qa import existence_question
from mmalign.shapeworld.video import VideoScene, sample_video
from mmalign.shapeworld.world import Scene, WorldConfig, sample_scene

GROUPS: tuple[str, ...] = ("violating", "control")


def probe_question(shape: str, cfg: WorldConfig | None = None) -> str:
    """The yes/no question asked about the partner (the training existence-question wording)."""
    return existence_question(shape, "image", cfg or WorldConfig())


def _free_world(cfg: WorldConfig) -> WorldConfig:
    """``cfg`` without co-occurrence forcing (p = 0.5: partners neither forced in nor removed often)."""
    return dataclasses.replace(
        cfg, cooccurrence={t: (p, 0.5) for t, (p, _) in cfg.cooccurrence.items()}, annotation_noise=0.0
    )


def _first_accepted(
    draw: Callable[[int], Any], shapes_of: Callable[[Any], set[str]], group: str, trigger: str, partner: str
) -> Any:
    """The first of ``draw(0), draw(1), …`` that fits ``group``: partner absent, trigger shown
    (violating) or not (control)."""
    for attempt in range(10_000):
        item = draw(attempt)
        shapes = shapes_of(item)
        if partner not in shapes and (trigger in shapes) == (group == "violating"):
            return item
    raise RuntimeError(f"could not sample a {group} probe for {trigger} -> {partner}")


def _sample(free: WorldConfig, seed: int, group: str, i: int, trigger: str, partner: str) -> Scene:
    """Probe ``i`` of ``group``: the first accepted draw of its own seeded stream."""
    return _first_accepted(
        lambda a: sample_scene(random.Random(f"{seed}:prior:{group}:{i}:{a}"), free, f"prior_{seed}_{group}_{i:05d}"),
        Scene.shapes, group, trigger, partner,
    )  # fmt: skip


def prior_probes(cfg: WorldConfig, seed: int, n_per_group: int) -> list[tuple[Scene, dict]]:
    """``n_per_group`` violating and ``n_per_group`` control scenes, rules taken in turn.

    Returns:
        ``(scene, record)`` pairs; ``record`` lacks only ``image`` (the writer adds the path).
    """
    if not cfg.cooccurrence:
        return []
    free, rules, out = _free_world(cfg), list(cfg.cooccurrence.items()), []
    for group in GROUPS:
        for i in range(n_per_group):
            trigger, (partner, _) = rules[i % len(rules)]
            scene = _sample(free, seed, group, i, trigger, partner)
            out.append(
                (
                    scene,
                    {
                        "scene_id": scene.id,
                        "group": group,
                        "trigger": trigger,
                        "partner": partner,
                        "question": probe_question(partner, cfg),
                        "scene": scene.to_dict(),
                    },
                )
            )
    return out


def _sample_video(free: WorldConfig, seed: int, group: str, i: int, trigger: str, partner: str) -> VideoScene:
    """Video probe ``i`` of ``group``: the first accepted draw of its own seeded stream."""
    return _first_accepted(
        lambda a: sample_video(random.Random(f"{seed}:vprior:{group}:{i}:{a}"), free, f"vprior_{seed}_{group}_{i:05d}"),
        lambda v: {t.shape for t in v.tracks}, group, trigger, partner,
    )  # fmt: skip


def video_prior_probes(cfg: WorldConfig, seed: int, n_per_group: int) -> list[tuple[VideoScene, dict]]:
    """:func:`prior_probes` for video clips: violating (trigger shown, partner absent in every
    frame) and control clips (neither), ids ``vprior_<seed>_<group>_<k>``.

    Returns:
        ``(video, record)`` pairs; ``record`` (``scene_id``, ``group``, ``trigger``, ``partner``,
        ``question`` — the video existence question — and ``scene``) lacks only ``video``.
    """
    if not cfg.cooccurrence:
        return []
    free, rules, out = _free_world(cfg), list(cfg.cooccurrence.items()), []
    for group in GROUPS:
        for i in range(n_per_group):
            trigger, (partner, _) = rules[i % len(rules)]
            video = _sample_video(free, seed, group, i, trigger, partner)
            record = {
                "scene_id": video.id,
                "group": group,
                "trigger": trigger,
                "partner": partner,
                "question": existence_question(partner, "video", cfg),
                "scene": video.to_dict(),
            }
            out.append((video, record))
    return out
