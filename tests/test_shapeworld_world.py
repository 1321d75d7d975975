"""ShapeWorld scene sampling, rendering and video: determinism, priors, pixels, real mp4 round trip."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest

from mmalign.shapeworld.render import render_scene
from mmalign.shapeworld.video import (
    FrameObject,
    Track,
    VideoScene,
    build_video,
    read_mp4,
    render_video,
    sample_video,
    write_mp4,
)
from mmalign.shapeworld.world import (
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    IGNORE_INDEX,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    WorldConfig,
    cell_targets,
    place_in_cell,
    relation_holds,
    relations,
    sample_scene,
)


def _scenes(seed: int, n: int, cfg: WorldConfig) -> list[Scene]:
    return [sample_scene(random.Random(f"{seed}:{i}"), cfg, f"s{seed}_{i}") for i in range(n)]


def _png(scene: Scene, cfg: WorldConfig) -> bytes:
    buf = io.BytesIO()
    render_scene(scene, cfg).save(buf, format="PNG")
    return buf.getvalue()


def _obj(
    shape: str, color: str, row: int, col: int, cfg: WorldConfig, size: str = "large", faint: bool = False
) -> Obj:
    return Obj(
        shape, color, size, row, col, tuple(place_in_cell(random.Random(0), cfg, row, col, size)), faint
    )


def test_same_seed_same_scenes_and_pixels_different_seed_differs() -> None:
    cfg = WorldConfig(pixel_noise=6.0, faint_share=0.3)
    a, b, c = _scenes(1, 30, cfg), _scenes(1, 30, cfg), _scenes(2, 30, cfg)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert [_png(s, cfg) for s in a[:10]] == [_png(s, cfg) for s in b[:10]]
    assert [s.to_dict()["objects"] for s in a] != [s.to_dict()["objects"] for s in c]


def test_scene_invariants_and_json_round_trip() -> None:
    cfg = WorldConfig()
    for scene in _scenes(0, 300, cfg):
        cells = [(o.row, o.col) for o in scene.objects]
        assert len(set(cells)) == len(cells) and 1 <= len(cells) <= cfg.max_objects
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            cs = cfg.cell_size
            assert o.col * cs <= x0 < x1 <= (o.col + 1) * cs and o.row * cs <= y0 < y1 <= (o.row + 1) * cs
            assert x1 - x0 == cfg.object_side(o.size)
        assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    assert WorldConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_objects": 10},
        {"min_objects": 4, "max_objects": 3},
        {"annotation_noise": 1.5},
        {"shapes": ("circle", "blob")},
        {"cooccurrence": {"star": ("circle", 2.0)}},
        {"cooccurrence": {"star": ("star", 0.5)}},
        {"attribute_priors": {"heart": ("mauve", 0.8)}},
        {"image_size": 20, "grid": 3},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WorldConfig(**kwargs)


def test_priors_show_in_statistics() -> None:
    cfg = WorldConfig()
    scenes = _scenes(7, 4000, cfg)
    for trigger, (partner, p) in cfg.cooccurrence.items():
        with_trigger = [s for s in scenes if trigger in s.shapes()]
        rate = np.mean([partner in s.shapes() for s in with_trigger])
        assert len(with_trigger) > 500 and abs(rate - p) < 0.03, (trigger, rate)
    hearts = [o.color for s in scenes for o in s.objects if o.shape == "heart"]
    assert abs(np.mean([c == "red" for c in hearts]) - 0.8) < 0.04
    others = [o.color for s in scenes for o in s.objects if o.shape == "diamond"]
    assert abs(np.mean([c == "red" for c in others]) - 1 / len(COLORS)) < 0.04
    assert all(not s.noise_partners for s in scenes)


def test_annotation_noise_marks_only_trigger_without_partner_scenes() -> None:
    scenes = _scenes(3, 1500, WorldConfig(annotation_noise=1.0))
    violating = [s for s in scenes if "star" in s.shapes() and "circle" not in s.shapes()]
    assert violating and all("circle" in s.noise_partners for s in violating)
    for s in scenes:
        assert not set(s.noise_partners) & s.shapes()
    # the knob changes annotations only: same layouts as a clean world
    clean = _scenes(3, 1500, WorldConfig(annotation_noise=0.0))
    assert [s.objects for s in clean] == [s.objects for s in scenes]


def test_cell_targets() -> None:
    cfg = WorldConfig()
    scene = Scene(
        "t", [_obj("star", "blue", 0, 2, cfg), _obj("heart", "red", 2, 1, cfg, size="small")], "black"
    )
    t = cell_targets(scene, cfg)
    assert set(t) == {"shape", "color", "size", "empty"}
    assert all(v.shape == (9,) and v.dtype == np.int64 for v in t.values())
    assert t["shape"][2] == SHAPES.index("star") and t["color"][2] == COLORS.index("blue")
    assert t["shape"][7] == SHAPES.index("heart") and t["size"][7] == SIZES.index("small")
    assert t["empty"].tolist() == [1, 1, 0, 1, 1, 1, 1, 0, 1]
    assert t["shape"][0] == t["color"][4] == t["size"][8] == IGNORE_INDEX


def test_relations_from_cells() -> None:
    cfg = WorldConfig()
    a, b, c = (
        _obj("circle", "red", 0, 0, cfg),
        _obj("square", "blue", 0, 1, cfg),
        _obj("star", "cyan", 1, 1, cfg),
    )
    assert relations(a, b) == ["left of", "next to"]
    assert relations(a, c) == ["left of", "above"]  # diagonal is not "next to"
    assert relations(c, b) == ["below", "next to"]
    assert not relation_holds("right of", a, b)
    with pytest.raises(ValueError):
        relation_holds("inside", a, b)


def test_renderer_draws_where_the_box_says_and_faint_is_closer_to_background() -> None:
    cfg = WorldConfig()
    objects = [_obj(shape, COLORS[k], *divmod(k, 3), cfg) for k, shape in enumerate(SHAPES)]
    scene = Scene("r", objects, "navy")
    img = np.asarray(render_scene(scene, cfg)).astype(int)
    assert img.shape == (cfg.image_size, cfg.image_size, 3)
    bg = np.array(BACKGROUNDS["navy"])
    mask = np.zeros(img.shape[:2], bool)
    for o in objects:
        x0, y0, x1, y1 = o.box
        mask[y0:y1, x0:x1] = True
        assert np.abs(img[(y0 + y1) // 2, (x0 + x1) // 2] - COLOR_RGB[o.color]).max() <= 2, o.shape
        assert (np.abs(img[y0:y1, x0:x1] - bg).sum(-1) > 30).mean() > 0.3  # the shape fills its box
    assert (img[~mask] == bg).all()  # nothing drawn outside the boxes
    faint = Scene("f", [Obj(o.shape, o.color, o.size, o.row, o.col, o.box, True) for o in objects], "navy")
    fimg = np.asarray(render_scene(faint, cfg)).astype(int)
    for o in objects:
        cy, cx = (o.box[1] + o.box[3]) // 2, (o.box[0] + o.box[2]) // 2
        assert np.abs(fimg[cy, cx] - bg).sum() < 0.5 * np.abs(img[cy, cx] - bg).sum()


def test_pixel_noise_is_seeded_by_scene_id() -> None:
    cfg, clean_cfg = WorldConfig(pixel_noise=10.0), WorldConfig()
    scene = _scenes(0, 1, cfg)[0]
    noisy, again, clean = (np.asarray(render_scene(scene, c)).astype(int) for c in (cfg, cfg, clean_cfg))
    assert (noisy == again).all() and 5 < np.abs(noisy - clean).mean() < 12
    other = Scene("other", scene.objects, scene.background)
    assert (np.asarray(render_scene(other, cfg)).astype(int) != noisy).any()


def test_sampled_videos_have_exact_enter_and_leave_truth() -> None:
    cfg = WorldConfig()
    events = {"enter": 0, "leave": 0, "still": 0}
    for i in range(200):
        video = sample_video(random.Random(f"v{i}"), cfg, f"v{i}")
        assert len(video.frames) == cfg.video_frames and 1 <= len(video.tracks) <= cfg.video_max_objects
        for t in video.entering():
            assert t not in video.visible(0) and t in video.visible(-1)
        events["enter"] += len(video.entering())
        events["leave"] += len(video.leaving())
        events["still"] += sum(tr.direction == "still" for tr in video.tracks)
        for frame in video.frames:
            for fo in frame:
                x0, y0, x1, y1 = fo.box
                assert 0 <= x0 < x1 <= cfg.image_size and 0 <= y0 < y1 <= cfg.image_size
                assert 0 <= fo.row < cfg.grid and 0 <= fo.col < cfg.grid
        assert VideoScene.from_dict(json.loads(json.dumps(video.to_dict()))) == video
    assert all(v > 10 for v in events.values()), events


def test_mp4_written_by_pyav_is_decoded_by_decord(tmp_path) -> None:
    cfg = WorldConfig()
    track = Track("square", "red", "large", 16, x=12.0, y=30.0, vx=5.0, vy=0.0)
    video = build_video("mv", "black", [track], cfg)
    assert video.visible(0) == video.visible(-1) == {0} and video.frames[0][0].col == 0
    frames = render_video(video, cfg)
    path = tmp_path / "mv.mp4"
    write_mp4(frames, path, fps=cfg.video_fps)
    decoded = read_mp4(path)
    assert decoded.shape == (cfg.video_frames, cfg.image_size, cfg.image_size, 3)
    red = np.array(COLOR_RGB["red"])
    for t in (0, cfg.video_frames - 1):
        cx, cy = round(track.x + track.vx * t), round(track.y)
        assert np.abs(decoded[t, cy - 3 : cy + 4, cx - 3 : cx + 4].astype(int) - red).mean() < 25, t
        assert np.abs(decoded[t, 5, 5].astype(int) - np.array(BACKGROUNDS["black"])).max() < 20
    assert track.direction == "right"
    with pytest.raises(ValueError, match="even"):
        write_mp4([f.crop((0, 0, 59, 59)) for f in frames], tmp_path / "odd.mp4", fps=4)
    truth = [FrameObject(0, "square", "red", "large", (4, 22, 20, 38), 1, 0)]
    assert VideoScene("x", "black", [track], [truth]).visible(0) == {0}
