"""The tiny ShapeWorld model's own training stages, kept beside the world so that the generic
engine (:mod:`mmalign.training`) knows nothing of ShapeWorld:

* :mod:`~mmalign.shapeworld.recipe.tiny_preset` — the tiny model's architecture and tokenizer
  built from the world's vocabulary;
* :mod:`~mmalign.shapeworld.recipe.stage0` — stage 0: the vision encoder trained on rendered
  objects' scene-graph targets;
* :mod:`~mmalign.shapeworld.recipe.temporal` — the temporal-mixer stage on per-cell motion.

The SFT stages themselves run on the generic trainers (``train/sft.py``).
"""
