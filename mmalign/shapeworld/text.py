"""Text from ShapeWorld scene graphs: one import point for captions, dense captions and QA.

The generators live in :mod:`~mmalign.shapeworld.captions` (captions, dense captions, noisy
annotation), :mod:`~mmalign.shapeworld.qa` (image QA) and :mod:`~mmalign.shapeworld.video_text`
(video captions and QA); this module re-exports them.
"""

from mmalign.shapeworld.captions import (
    DETAILED_PROMPTS,
    SHORT_PROMPTS,
    annotated_objects,
    caption_prompt,
    dense_captions,
    describe,
    detailed_caption,
    invented_partners,
    plural,
    position_phrase,
    position_words,
    short_caption,
)
from mmalign.shapeworld.qa import (
    QA_GENERATORS,
    color_qa,
    count_qa,
    existence_qa,
    image_qa,
    multiple_choice_qa,
    position_qa,
    relation_qa,
)
from mmalign.shapeworld.video_text import VIDEO_PROMPTS, video_caption, video_prompt, video_qa

__all__ = [
    "DETAILED_PROMPTS",
    "QA_GENERATORS",
    "SHORT_PROMPTS",
    "VIDEO_PROMPTS",
    "annotated_objects",
    "caption_prompt",
    "color_qa",
    "count_qa",
    "dense_captions",
    "describe",
    "detailed_caption",
    "existence_qa",
    "image_qa",
    "invented_partners",
    "multiple_choice_qa",
    "plural",
    "position_phrase",
    "position_qa",
    "position_words",
    "relation_qa",
    "short_caption",
    "video_caption",
    "video_prompt",
    "video_qa",
]
