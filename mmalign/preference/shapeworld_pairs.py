"""(truth, injected hallucination) preference pairs from exact ShapeWorld scene graphs.

A simple POVID-style injector (the full builder with image distortion is its own tool): the
chosen answer is the scene's text as the annotation describes it, the rejected answer the same
text with one hallucination injected. ``annotation``:

* ``exact`` (default) — the exact scene graph (never the noisy training annotation): an upper
  bound, a preference annotator who sees the scene.
* ``noisy`` — the noisy annotation the SFT model learned (``llava/train.json``): a train scene's
  invented co-occurrence partners (``scene.noise_partners``, the world's ``annotation_noise``)
  count as present, with the same invented cell and attributes as in the training text
  (:func:`mmalign.shapeworld.captions.annotated_objects` with ``noisy=True``), so the chosen
  caption names them (as its own sentence rather than the training text's "next to" clause),
  "Is there a <partner>?" is answered "yes", and the injected shape is one absent from the
  annotation. This is what a method gets in the study's noisy regime.

The kinds:

* ``caption`` — the detailed caption with an extra object in a free cell. The injected shape is
  the co-occurrence partner of a present trigger when it is absent (the prior-driven
  hallucination ShapeWorld plants, e.g. a circle next to a star), otherwise a random absent
  shape; the count sentence changes with it, as a hallucinating model's would.
* ``attribute`` — the caption with one object's colour altered (to its shape's attribute prior
  when that differs, else a random other colour).
* ``existence`` — "Is there a <shape>?" about an absent shape (the partner first): chosen "no",
  rejected "yes"; and about a present shape: chosen "yes", rejected "no".

Records are written in POVID's format (``conversations`` / ``rejected_conversations``), so
:func:`mmalign.preference.formats.load_preferences` reads them back; each also carries the scene's
exact detailed caption as ``captions`` (and, for yes/no questions, the true ``answer``), the
facts LLaVA-RLHF's factually augmented reward prompt lists (``configs/reward/tiny_shapeworld.yaml``).

Launch::

    python -m mmalign.preference.shapeworld_pairs --data runs/shapeworld --split train --out runs/shapeworld/pairs/train.jsonl

(``--annotation noisy`` for the noisy annotation's pairs.)
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from mmalign.shapeworld.captions import annotated_objects, caption_prompt, detailed_caption
from mmalign.shapeworld.qa import existence_question
from mmalign.shapeworld.vocab import SIZES
from mmalign.shapeworld.world import Obj, Scene, WorldConfig, place_in_cell, sample_color

KINDS = ("caption", "attribute", "existence")
#: What the chosen answers follow: the exact scene graph, or the noisy training annotation.
ANNOTATIONS = ("exact", "noisy")


def injected_shape(scene: Scene, cfg: WorldConfig, rng: random.Random) -> str | None:
    """The shape to hallucinate: an absent co-occurrence partner of a present trigger, else any absent shape."""
    present = scene.shapes()
    partners = [p for t, (p, _) in sorted(cfg.cooccurrence.items()) if t in present and p not in present]
    if partners:
        return rng.choice(partners)
    absent = [s for s in cfg.shapes if s not in present]
    return rng.choice(absent) if absent else None


def inject_object(scene: Scene, cfg: WorldConfig, rng: random.Random) -> Scene | None:
    """The scene with one hallucinated object in a free cell (None when the board is full)."""
    shape = injected_shape(scene, cfg, rng)
    taken = {(o.row, o.col) for o in scene.objects}
    free = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid) if (r, c) not in taken]
    if shape is None or not free:
        return None
    row, col = rng.choice(free)
    size = rng.choice(SIZES)
    obj = Obj(
        shape, sample_color(rng, cfg, shape), size, row, col, tuple(place_in_cell(rng, cfg, row, col, size))
    )
    return replace(scene, objects=[*scene.objects, obj], noise_partners=[])


def alter_attribute(scene: Scene, cfg: WorldConfig, rng: random.Random) -> Scene | None:
    """The scene with one object's colour changed (prior colour preferred)."""
    if not scene.objects:
        return None
    i = rng.randrange(len(scene.objects))
    obj = scene.objects[i]
    prior = cfg.attribute_priors.get(obj.shape)
    options = [c for c in cfg.colors if c != obj.color]
    color = prior[0] if prior and prior[0] != obj.color else rng.choice(options)
    objects = list(scene.objects)
    objects[i] = replace(obj, color=color)
    return replace(scene, objects=objects, noise_partners=[])


def _record(rid: str, image: str, question: str, chosen: str, rejected: str, kind: str, caption: str) -> dict:
    human = {"from": "human", "value": "<image>\n" + question}
    rec = {
        "id": rid,
        "image": image,
        "conversations": [human, {"from": "gpt", "value": chosen}],
        "rejected_conversations": [human, {"from": "gpt", "value": rejected}],
        "task": kind,
        # LLaVA-RLHF's factual augmentation: the ground-truth captions the reward prompt lists
        # (configs/prompts/fact_rlhf_reward.txt), and the true answer of a yes/no question.
        "captions": [caption],
    }
    if kind == "existence":
        rec["answer"] = chosen
    return rec


def annotated_scene(scene: Scene, cfg: WorldConfig, annotation: str = "exact") -> Scene:
    """The scene as the annotation describes it: ``exact`` — its true objects; ``noisy`` — those
    plus its invented partners as objects (the training text's view); no noise partners left."""
    if annotation not in ANNOTATIONS:
        raise ValueError(f"annotation must be one of {ANNOTATIONS}, got {annotation!r}")
    objects = annotated_objects(scene, cfg, noisy=annotation == "noisy")
    return replace(scene, objects=objects, noise_partners=[])


def scene_pairs(
    scene: Scene,
    image: str,
    cfg: WorldConfig,
    seed: int,
    kinds: tuple[str, ...] = KINDS,
    annotation: str = "exact",
) -> Iterator[dict]:
    """POVID-format pair records for one scene (the ``annotation``'s view of it as chosen)."""
    clean = annotated_scene(scene, cfg, annotation)
    truth = detailed_caption(clean, cfg)
    rng = random.Random(f"{seed}:pairs:{scene.id}")
    if "caption" in kinds and (fake := inject_object(clean, cfg, rng)) is not None:
        yield _record(
            f"{scene.id}-inject",
            image,
            caption_prompt(rng),
            truth,
            detailed_caption(fake, cfg),
            "caption",
            truth,
        )
    if "attribute" in kinds and (fake := alter_attribute(clean, cfg, rng)) is not None:
        yield _record(
            f"{scene.id}-attribute",
            image,
            caption_prompt(rng),
            truth,
            detailed_caption(fake, cfg),
            "attribute",
            truth,
        )
    if "existence" in kinds:
        absent = injected_shape(clean, cfg, rng)
        if absent is not None:
            q = existence_question(absent, "image", cfg)
            yield _record(f"{scene.id}-absent", image, q, "no", "yes", "existence", truth)
        if clean.objects:
            shape = rng.choice(sorted(clean.shapes()))
            q = existence_question(shape, "image", cfg)
            yield _record(f"{scene.id}-present", image, q, "yes", "no", "existence", truth)


def build_pairs(
    data: str | Path, split: str = "train", kinds: tuple[str, ...] = KINDS, annotation: str = "exact"
) -> list[dict]:
    """Pairs for every image scene of ``data/scenes/{split}.jsonl`` (paths relative to ``data``);
    ``annotation``: ``exact`` or ``noisy`` (see the module docstring; val/test scenes have no noise)."""
    data = Path(data)
    world = json.loads((data / "world.json").read_text())["params"]
    cfg = WorldConfig.from_dict(world["config"])
    path = data / "scenes" / f"{split}.jsonl"
    out: list[dict] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
        if rec.get("kind") != "image":
            continue
        try:
            scene = Scene.from_dict(rec)
            image = rec["image"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{lineno}: not a ShapeWorld image scene ({exc})") from exc
        out.extend(scene_pairs(scene, image, cfg, int(world.get("seed", 0)), kinds, annotation))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ShapeWorld (truth, injected hallucination) pairs")
    parser.add_argument("--data", required=True, help="a `python -m mmalign.shapeworld generate` folder")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="JSONL file (POVID format, paths relative to --data)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {KINDS}")
    parser.add_argument(
        "--annotation",
        choices=ANNOTATIONS,
        default="exact",
        help="chosen answers from the exact scene graph (default) or the noisy training annotation",
    )
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}")
    records = build_pairs(args.data, args.split, kinds, args.annotation)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(out)
    print(f"{len(records)} pairs → {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
