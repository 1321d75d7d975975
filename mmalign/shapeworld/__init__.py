"""ShapeWorld: a synthetic, exactly verifiable world of rendered shapes (images and videos).

Scene graphs (:mod:`.world`), PIL rendering (:mod:`.render`), videos (:mod:`.video`), text and QA
from scene graphs (:mod:`.text`), exact judges — CHAIR, QA, POPE — (:mod:`.judges`) and the
dataset writer (:mod:`.generate`, CLI ``python -m mmalign.shapeworld generate``).
"""

from mmalign.shapeworld.generate import generate
from mmalign.shapeworld.judges import (
    CorpusStats,
    Mention,
    answer_yes_no,
    chair,
    compute_corpus_stats,
    parse_mentions,
    pope_metrics,
    pope_probes,
    qa_correct,
)
from mmalign.shapeworld.render import render_scene
from mmalign.shapeworld.text import (
    annotated_objects,
    dense_captions,
    detailed_caption,
    image_qa,
    short_caption,
    video_caption,
    video_qa,
)
from mmalign.shapeworld.video import VideoScene, build_video, read_mp4, render_video, sample_video, write_mp4
from mmalign.shapeworld.world import (
    BACKGROUNDS,
    COLOR_RGB,
    COLORS,
    IGNORE_INDEX,
    RELATIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    WorldConfig,
    cell_targets,
    relation_holds,
    relations,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "COLOR_RGB",
    "IGNORE_INDEX",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "CorpusStats",
    "Mention",
    "Obj",
    "Scene",
    "VideoScene",
    "WorldConfig",
    "annotated_objects",
    "answer_yes_no",
    "build_video",
    "cell_targets",
    "chair",
    "compute_corpus_stats",
    "dense_captions",
    "detailed_caption",
    "generate",
    "image_qa",
    "parse_mentions",
    "pope_metrics",
    "pope_probes",
    "qa_correct",
    "read_mp4",
    "relation_holds",
    "relations",
    "render_scene",
    "render_video",
    "sample_scene",
    "sample_video",
    "short_caption",
    "video_caption",
    "video_qa",
    "write_mp4",
]
