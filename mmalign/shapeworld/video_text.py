"""Captions and QA items from video scene graphs, exact or following the noisy annotation.

**Video annotation noise** (``WorldConfig.video_annotation_noise``, as the image captions'
``annotation_noise``): in a clip that shows a co-occurrence trigger without its partner, the
training annotation names the absent partner with that probability — an invented sentence about
it in the description (right after the trigger's sentence, the count sentence raised by one) —
and counts it as present when an existence question is drawn (so one about it answers "yes").
The per-frame counts (``video_count``) stay exact. :func:`video_noise_partners` decides it from the clip
id alone (order-independent, no scene-graph field); pass ``noisy=True`` only for training text.

QA types: ``video_existence`` (yes/no, balanced), ``video_motion`` (``left``/``right``/``up``/
``down``/``still``), ``video_appear`` / ``video_leave`` (the shape that enters / leaves, asked only
when exactly one object does), ``video_event`` (yes/no: does any object enter / leave?) and
``video_count`` (objects visible in the first / last frame).
"""

from __future__ import annotations

import random

from mmalign.shapeworld.captions import article, count_sentence, position_phrase
from mmalign.shapeworld.qa import existence_question
from mmalign.shapeworld.video import DIRECTIONS, Track, VideoScene
from mmalign.shapeworld.vocab import SIZES, stable_seed
from mmalign.shapeworld.world import WorldConfig, sample_color

VIDEO_PROMPTS: tuple[str, ...] = (
    "Describe the video in detail.",
    "Describe what happens in the video.",
)
_FROM = {"left": "right", "right": "left", "up": "bottom", "down": "top"}


def _track_name(track: Track, tracks: list[Track]) -> str | None:
    """``circle`` if its shape is unique among tracks, else ``red circle`` if unique, else None."""
    if sum(t.shape == track.shape for t in tracks) == 1:
        return track.shape
    if sum(t.shape == track.shape and t.color == track.color for t in tracks) == 1:
        return f"{track.color} {track.shape}"
    return None


def video_noise_partners(video: VideoScene, cfg: WorldConfig) -> list[str]:
    """Absent co-occurrence partners that the noisy annotation of ``video`` names (module docstring).

    For each rule ``trigger -> partner`` with the trigger shown and the partner absent, the partner
    is named with probability ``cfg.video_annotation_noise`` (seeded by the clip id and rule).
    """
    shown = {t.shape for t in video.tracks}
    return [
        partner
        for trigger, (partner, _) in cfg.cooccurrence.items()
        if trigger in shown
        and partner not in shown
        and random.Random(stable_seed("video-noise", video.id, trigger)).random() < cfg.video_annotation_noise
    ]


def _invented_sentence(video: VideoScene, partner: str, cfg: WorldConfig) -> str:
    """A plausible sentence about an absent ``partner``: free first-frame cell, random motion."""
    rng = random.Random(stable_seed("video-noise-partner", video.id, partner))
    taken = {(fo.row, fo.col) for fo in video.frames[0]}
    free = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid) if (r, c) not in taken] or [(0, 0)]
    row, col = rng.choice(free)
    phrase = f"{rng.choice(SIZES)} {sample_color(rng, cfg, partner)} {partner}"
    direction = rng.choice(DIRECTIONS)
    motion = "stays still" if direction == "still" else f"moves {direction}"
    return f"{article(phrase).capitalize()} {phrase} {position_phrase(row, col, cfg.grid)} {motion}."


def video_caption(video: VideoScene, cfg: WorldConfig, noisy: bool = False) -> str:
    """One sentence per object: where it starts, how it moves, whether it enters or leaves.

    Example: ``There are 2 objects. A large red circle at the top left moves right. A small blue
    star enters from the left and moves right.`` With ``noisy``, the annotation's invented
    partners (:func:`video_noise_partners`) follow their trigger's sentence and are counted.
    """
    entering, leaving = set(video.entering()), set(video.leaving())
    first = {fo.track: fo for fo in video.frames[0]}
    invented = video_noise_partners(video, cfg) if noisy else []
    sentences = [count_sentence(len(video.tracks) + len(invented))]
    for i, tr in enumerate(video.tracks):
        phrase = f"{tr.size} {tr.color} {tr.shape}"
        head = f"{article(phrase).capitalize()} {phrase}"
        where = f" {position_phrase(first[i].row, first[i].col, cfg.grid)}" if i in first else ""
        direction = tr.direction
        if direction == "still":
            sentences.append(f"{head}{where} stays still.")
        elif i in entering:
            sentences.append(f"{head} enters from the {_FROM[direction]} and moves {direction}.")
        elif i in leaving:
            sentences.append(f"{head}{where} moves {direction} and leaves the frame.")
        else:
            sentences.append(f"{head}{where} moves {direction}.")
        for trigger, (partner, _) in cfg.cooccurrence.items():
            if tr.shape == trigger and partner in invented:
                sentences.append(_invented_sentence(video, partner, cfg))
                invented.remove(partner)
    return " ".join(sentences)


def video_qa(video: VideoScene, cfg: WorldConfig, rng: random.Random, noisy: bool = False) -> list[dict]:
    """All video QA items (see module docstring); deterministic given ``rng``.

    With ``noisy``, the existence questions treat the annotation's invented partners as present
    (the same draws from ``rng`` as without noise when the clip has none).
    """
    tracks = video.tracks
    out: list[dict] = []
    shown = {t.shape for t in tracks} | set(video_noise_partners(video, cfg) if noisy else [])
    present = sorted(shown, key=cfg.shapes.index)
    absent = [s for s in cfg.shapes if s not in present]
    if present and absent:
        for shape, answer in ((rng.choice(present), "yes"), (rng.choice(absent), "no")):
            out.append(
                {
                    "type": "video_existence",
                    "question": existence_question(shape, "video", cfg),
                    "answer": answer,
                    "shape": shape,
                }
            )
    named = [(t, n) for t in tracks if (n := _track_name(t, tracks))]
    for t, name in rng.sample(named, min(2, len(named))):
        out.append(
            {
                "type": "video_motion",
                "question": f"Motion of the {name}"
                if cfg.question_style != "natural"
                else f"In which direction does the {name} move?",
                "answer": t.direction,
                "shape": t.shape,
                "name": name,
            }
        )
    for kind, idx, verb in (
        ("video_appear", video.entering(), "enters"),
        ("video_leave", video.leaving(), "leaves"),
    ):
        if len(idx) == 1:
            shape = tracks[idx[0]].shape
            out.append(
                {"type": kind, "question": f"Which shape {verb} the frame?", "answer": shape, "shape": shape}
            )
    kind_u = rng.random() < 0.5
    verb, idx = ("enter", video.entering()) if kind_u else ("leave", video.leaving())
    out.append(
        {
            "type": "video_event",
            "question": f"Does any object {verb} the frame?",
            "answer": "yes" if idx else "no",
            "event": verb,
        }
    )
    n_first, n_last = len(video.frames[0]), len(video.frames[-1])
    out.append(
        {
            "type": "video_count",
            "question": "How many objects are visible in the first frame?",
            "answer": str(n_first),
            "frame": "first",
        }
    )
    out.append(
        {
            "type": "video_count",
            "question": "How many objects are visible in the last frame?",
            "answer": str(n_last),
            "frame": "last",
        }
    )
    return out


def video_prompt(rng: random.Random) -> str:
    """An instruction asking for a video description."""
    return rng.choice(VIDEO_PROMPTS)
