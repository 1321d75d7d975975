"""Write a ShapeWorld dataset to disk: media, scene graphs, LLaVA conversations, QA, dense captions, POPE.

Layout of ``out_dir`` (paths inside records are relative to ``out_dir``)::

    images/<id>.png  videos/<id>.mp4
    scenes/{train,val,test}.jsonl          scene graphs (images: kind=image, videos: kind=video)
    llava/{train,val,test}.json            LLaVA list: one single-turn record per caption / QA:
                                           {"id", "image"|"video", "conversations": [human, gpt],
                                            "task": caption|short_caption|<qa type>|video_caption,
                                            "scene_id"}; "<image>\n"/"<video>\n" opens the human turn
    llava/train_clean.json                 the train records with the exact annotation (same
                                           scenes, ids and prompts; a noisy scene's questions may
                                           differ; written when annotation_noise > 0): the data
                                           of a control continuation
    llava/train_prior.json                 the train records (noisy as in train.json) of the scenes and clips
                                           that violate a co-occurrence rule (trigger shown,
                                           partner absent): a recipe can oversample them
    prior/test.jsonl                       held-out prior-hallucination probes (:mod:`.prior`):
                                           violating (trigger, no partner) and control scenes
    prior/test_video.jsonl                 the same for video clips (written when n_videos > 0)
    qa/{train,val,test}.jsonl              QA items with exact answers (evaluation truth)
    dense/{train,val,test}.jsonl           per-image region captions with [x, y, w, h] boxes
    pope/{split}_{random,popular,adversarial}.jsonl
    world.json  .complete                  resolved config, seed, counts; completion marker

Splits are contiguous index ranges (train, then val, then test). Scene ``i`` is sampled from
``random.Random(f"{seed}:image:{i}")``, its captions and QA from ``{seed}:text:{i}`` / ``{seed}:qa:{i}``,
so the data do not depend on generation order. Training text (LLaVA records and dense captions of
the train split) follows the noisy annotation; ``qa/`` and every val/test file are exact.
POPE ranks popular/adversarial negatives with the train split's statistics.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mmalign.shapeworld.captions import caption_prompt, dense_captions, detailed_caption, short_caption
from mmalign.shapeworld.pope import SPLITS as POPE_SPLITS
from mmalign.shapeworld.pope import compute_corpus_stats, pope_probes
from mmalign.shapeworld.prior import prior_probes, video_prior_probes
from mmalign.shapeworld.qa import image_qa
from mmalign.shapeworld.render import render_scene
from mmalign.shapeworld.video import VideoScene, render_video, sample_video, write_mp4
from mmalign.shapeworld.video_text import video_caption, video_noise_partners, video_prompt, video_qa
from mmalign.shapeworld.wording import LOOKUP_TYPES, mixed_question
from mmalign.shapeworld.world import Scene, WorldConfig, sample_scene
from mmalign.utils import atomic_write as atomic_write  # re-exported: it lives in mmalign.utils

FORMAT_VERSION = 1
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
MARKER = ".complete"


def _jsonl(records: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()


def split_sizes(n: int, val_frac: float, test_frac: float) -> dict[str, int]:
    """Items per split: ``round(n * frac)`` for val and test, the rest train."""
    n_val, n_test = round(n * val_frac), round(n * test_frac)
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def _split_ranges(n: int, val_frac: float, test_frac: float) -> dict[str, range]:
    sizes, start, out = split_sizes(n, val_frac, test_frac), 0, {}
    for name in SPLIT_NAMES:
        out[name] = range(start, start + sizes[name])
        start += sizes[name]
    return out


def _record(rid: str, media_key: str, media: str, prompt: str, answer: str, task: str, scene_id: str) -> dict:
    tag = "<image>" if media_key == "image" else "<video>"
    return {
        "id": rid,
        media_key: media,
        "conversations": [{"from": "human", "value": f"{tag}\n{prompt}"}, {"from": "gpt", "value": answer}],
        "task": task,
        "scene_id": scene_id,
    }


def _image_text(
    scene: Scene, cfg: WorldConfig, seed: int, i: int, noisy: bool
) -> tuple[list[dict], list[dict], list[dict]]:
    """LLaVA records (following the annotation; and with the exact one) and exact QA items for one
    image scene.

    Returns:
        ``(records, exact_records, qa_items)``.
    """
    media = f"images/{scene.id}.png"
    records = _image_records(scene, cfg, seed, i, noisy)
    exact = records if not (noisy and scene.noise_partners) else _image_records(scene, cfg, seed, i, False)
    qa = [
        {"scene_id": scene.id, "image": media, **item}
        for item in image_qa(scene, cfg, random.Random(f"{seed}:qa:{i}"), noisy=False)
    ]
    return records, exact, qa


def _image_records(scene: Scene, cfg: WorldConfig, seed: int, i: int, noisy: bool) -> list[dict]:
    """The LLaVA records of one image scene (captions, then QA), following the annotation if ``noisy``."""
    media = f"images/{scene.id}.png"
    rng = random.Random(f"{seed}:text:{i}")
    records = [
        _record(
            f"{scene.id}-caption",
            "image",
            media,
            caption_prompt(rng),
            detailed_caption(scene, cfg, noisy),
            "caption",
            scene.id,
        ),
        _record(
            f"{scene.id}-short",
            "image",
            media,
            caption_prompt(rng, detailed=False),
            short_caption(scene, cfg, noisy),
            "short_caption",
            scene.id,
        ),
    ]
    train_qa = image_qa(scene, cfg, random.Random(f"{seed}:qa:{i}"), noisy=noisy)
    for k, item in enumerate(train_qa):
        rid = f"{scene.id}-qa{k}"
        prompt = _training_wording(item, cfg, seed, rid)
        records.append(_record(rid, "image", media, prompt, item["answer"], item["type"], scene.id))
    return records


def _training_wording(item: dict, cfg: WorldConfig, seed: int, rid: str) -> str:
    """The question of a training record: reworded per record when ``question_style`` is ``mixed``."""
    if cfg.question_style != "mixed" or item["type"] not in LOOKUP_TYPES:
        return item["question"]
    return mixed_question(item, random.Random(f"{seed}:wording:{rid}"))


def _video_text(
    video: VideoScene, cfg: WorldConfig, seed: int, i: int, noisy: bool
) -> tuple[list[dict], list[dict], list[dict]]:
    """LLaVA records (following the annotation; and with the exact one) and exact QA items for one
    video clip; without annotation noise on the clip both record lists are the same.

    Returns:
        ``(records, exact_records, qa_items)``.
    """
    media = f"videos/{video.id}.mp4"

    def records_of(noisy_text: bool) -> tuple[list[dict], list[dict]]:
        rng = random.Random(f"{seed}:vtext:{i}")
        recs = [
            _record(
                f"{video.id}-caption",
                "video",
                media,
                video_prompt(rng),
                video_caption(video, cfg, noisy=noisy_text),
                "video_caption",
                video.id,
            )
        ]
        items = video_qa(video, cfg, rng, noisy=noisy_text)
        for k, item in enumerate(items):
            rid = f"{video.id}-qa{k}"
            recs.append(
                _record(
                    rid,
                    "video",
                    media,
                    _training_wording(item, cfg, seed, rid),
                    item["answer"],
                    item["type"],
                    video.id,
                )
            )
        return recs, items

    exact, items = records_of(False)
    records = records_of(True)[0] if noisy and video_noise_partners(video, cfg) else exact
    return records, exact, [{"scene_id": video.id, "video": media, **item} for item in items]


def _params(
    cfg: WorldConfig,
    seed: int,
    n_images: int,
    n_videos: int,
    val_frac: float,
    test_frac: float,
    pope_per_image: int,
    prior_per_group: int,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "seed": seed,
        "n_images": n_images,
        "n_videos": n_videos,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "pope_per_image": pope_per_image,
        "prior_per_group": prior_per_group,
    }


def _check_out_dir(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The previous summary when ``out`` already holds this exact dataset; raise on conflicts."""
    world = out / "world.json"
    if world.exists():
        previous = json.loads(world.read_text())
        if previous.get("params") != params:
            old = previous.get("params", {})
            keys = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
            raise FileExistsError(
                f"{out} holds a ShapeWorld dataset generated with different arguments (differs in {keys}); "
                "choose another --out or delete it"
            )
        if (out / MARKER).exists():
            return previous["summary"]
        return None  # same arguments, interrupted run: regenerate in place
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no world.json; refusing to write into it")
    return None


def generate(
    out_dir: str | os.PathLike[str],
    n_images: int,
    n_videos: int,
    seed: int,
    cfg: WorldConfig | None = None,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    pope_per_image: int = 6,
    prior_per_group: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate a ShapeWorld dataset (see module docstring for the layout); idempotent.

    Args:
        out_dir: Output directory (created). Re-running with identical arguments returns the
            stored summary without writing; different arguments into a generated (or any
            non-empty) directory raise ``FileExistsError``.
        n_images: Image scenes over all splits.
        n_videos: Video scenes over all splits (needs an even ``cfg.image_size``).
        seed: Base seed of every random choice.
        cfg: World configuration; defaults to ``WorldConfig()``.
        val_frac: Share of items in the val split.
        test_frac: Share of items in the test split.
        pope_per_image: POPE probes per image (half yes, half no).
        prior_per_group: violating and control scenes of ``prior/test.jsonl`` (each; 0 = none).
        progress: Show a tqdm bar.

    Returns:
        Summary: ``counts`` per split, files written, generation rates (images/s, videos/s) and
        ``skipped`` (True when the dataset was already complete).
    """
    cfg = cfg or WorldConfig()
    if n_images < 0 or n_videos < 0:
        raise ValueError("n_images and n_videos must be ≥ 0")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(
            f"need 0 ≤ val_frac, test_frac and val_frac + test_frac < 1, got {val_frac}, {test_frac}"
        )
    if n_videos and cfg.image_size % 2:
        raise ValueError(f"videos need an even image_size (yuv420p), got {cfg.image_size}")
    out = Path(out_dir)
    params = _params(cfg, seed, n_images, n_videos, val_frac, test_frac, pope_per_image, prior_per_group)
    previous = _check_out_dir(out, params)
    if previous is not None:
        return {**previous, "skipped": True}
    for sub in ("images", "videos", "scenes", "llava", "qa", "dense", "pope", "prior"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    atomic_write(out / "world.json", json.dumps({"params": params, "complete": False}, indent=2).encode())

    bar = tqdm(total=n_images + n_videos, desc="shapeworld", unit="item", disable=not progress)
    counts: dict[str, dict[str, int]] = {}
    scenes_by_split: dict[str, list[Scene]] = {}
    t_images = t_videos = 0.0
    video_ranges = _split_ranges(n_videos, val_frac, test_frac)
    for split, indices in _split_ranges(n_images, val_frac, test_frac).items():
        noisy = split == "train"
        scene_recs, llava, clean, qa, dense, scenes, prior = [], [], [], [], [], [], []
        start = time.perf_counter()
        for i in indices:
            scene = sample_scene(random.Random(f"{seed}:image:{i}"), cfg, f"img_{seed}_{i:06d}")
            buf = io.BytesIO()
            render_scene(scene, cfg).save(buf, format="PNG", compress_level=1)
            atomic_write(out / "images" / f"{scene.id}.png", buf.getvalue())
            records, exact, items = _image_text(scene, cfg, seed, i, noisy)
            llava += records
            clean += exact
            shapes = scene.shapes()
            if any(t in shapes and p not in shapes for t, (p, _) in cfg.cooccurrence.items()):
                prior += records
            qa += items
            dense.append(
                {
                    "id": scene.id,
                    "image": f"images/{scene.id}.png",
                    "regions": dense_captions(scene, cfg, noisy),
                }
            )
            scene_recs.append({**scene.to_dict(), "image": f"images/{scene.id}.png", "split": split})
            scenes.append(scene)
            bar.update()
        t_images += time.perf_counter() - start
        start = time.perf_counter()
        for i in video_ranges[split]:
            video = sample_video(random.Random(f"{seed}:video:{i}"), cfg, f"vid_{seed}_{i:06d}")
            media = f"videos/{video.id}.mp4"
            tmp = out / "videos" / f".{video.id}.mp4.tmp{os.getpid()}"
            write_mp4(render_video(video, cfg), tmp, cfg.video_fps)
            os.replace(tmp, out / media)
            records, exact, items = _video_text(video, cfg, seed, i, noisy)
            llava += records
            clean += exact
            qa += items
            shown = {t.shape for t in video.tracks}
            if any(t in shown and p not in shown for t, (p, _) in cfg.cooccurrence.items()):
                prior += records
            scene_recs.append({**video.to_dict(), "video": media, "split": split})
            bar.update()
        t_videos += time.perf_counter() - start
        atomic_write(out / "scenes" / f"{split}.jsonl", _jsonl(scene_recs))
        atomic_write(out / "llava" / f"{split}.json", json.dumps(llava).encode())
        if split == "train" and cfg.annotation_noise > 0:
            atomic_write(out / "llava" / "train_clean.json", json.dumps(clean).encode())
        if split == "train" and cfg.cooccurrence:
            atomic_write(out / "llava" / "train_prior.json", json.dumps(prior).encode())
        atomic_write(out / "qa" / f"{split}.jsonl", _jsonl(qa))
        atomic_write(out / "dense" / f"{split}.jsonl", _jsonl(dense))
        scenes_by_split[split] = scenes
        counts[split] = {
            "images": len(indices),
            "videos": len(video_ranges[split]),
            "llava_records": len(llava),
            "qa_items": len(qa),
        }
    bar.close()

    stats = compute_corpus_stats(scenes_by_split["train"]) if scenes_by_split["train"] else None
    for split, scenes in scenes_by_split.items():
        for kind in POPE_SPLITS:
            probes = pope_probes(
                scenes, random.Random(f"{seed}:pope:{split}:{kind}"), pope_per_image, kind, stats, cfg.shapes
            )
            atomic_write(out / "pope" / f"{split}_{kind}.jsonl", _jsonl(probes))
            counts[split][f"pope_{kind}"] = len(probes)

    probes = []
    for scene, record in prior_probes(cfg, seed, prior_per_group):
        buf = io.BytesIO()
        render_scene(scene, cfg).save(buf, format="PNG", compress_level=1)
        atomic_write(out / "images" / f"{scene.id}.png", buf.getvalue())
        probes.append({**record, "image": f"images/{scene.id}.png"})
    atomic_write(out / "prior" / "test.jsonl", _jsonl(probes))
    counts["test"]["prior_probes"] = len(probes)
    if n_videos:
        clips = []
        for video, record in video_prior_probes(cfg, seed, prior_per_group):
            media = f"videos/{video.id}.mp4"
            tmp = out / "videos" / f".{video.id}.mp4.tmp{os.getpid()}"
            write_mp4(render_video(video, cfg), tmp, cfg.video_fps)
            os.replace(tmp, out / media)
            clips.append({**record, "video": media})
        atomic_write(out / "prior" / "test_video.jsonl", _jsonl(clips))
        counts["test"]["video_prior_probes"] = len(clips)

    summary = {
        "out_dir": str(out),
        "counts": counts,
        "n_noisy_train_scenes": sum(bool(s.noise_partners) for s in scenes_by_split["train"]),
        "images_per_s": n_images / t_images if t_images else None,
        "videos_per_s": n_videos / t_videos if t_videos else None,
        "skipped": False,
    }
    world = {"params": params, "complete": True, "summary": summary}
    atomic_write(out / "world.json", json.dumps(world, indent=2).encode())
    atomic_write(out / MARKER, b"ok\n")
    return summary
