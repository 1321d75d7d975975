"""CHAIR (Rohrbach et al., 2018, https://arxiv.org/abs/1809.02156): object hallucination in captions.

CHAIR-i = hallucinated object mentions / all object mentions (every occurrence counts);
CHAIR-s = captions with ≥ 1 hallucinated object / all captions.

- **ShapeWorld** (exact): :func:`mmalign.shapeworld.judges.chair` against scene graphs.
- **COCO**, from files the user has locally: the synonym list of the reference code
  (``synonyms.txt``: one line per COCO category, the category first, then its synonyms, comma
  separated), ``instances_val2014.json`` (objects in each image) and optionally
  ``captions_val2014.json`` (objects named by the human captions count as present too, as in the
  reference). Matching follows the reference: lower-case words, plural → singular, two-word
  names (``hot dog``, ``teddy bear``, ``baby bird`` → bird, ``passenger train`` → train,
  ``toilet seat`` → toilet) before single words. Departure: a small rule-based singulariser
  replaces pattern.en's ``singularize`` (same results on the COCO synonym vocabulary's plurals,
  e.g. ``people`` → person, ``knives`` → knife, ``buses`` → bus).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.common import GenerationOptions, answer, question
from mmalign.models.lmm import LMM

CHAIR_PROMPT = "Please describe this image in detail."
DOUBLE_WORDS = (
    "motor bike, motor cycle, air plane, traffic light, street light, traffic signal, stop light, fire hydrant, "
    "stop sign, parking meter, suit case, sports ball, baseball bat, baseball glove, tennis racket, wine glass, "
    "hot dog, cell phone, mobile phone, teddy bear, hair drier, potted plant, bow tie, laptop computer, "
    "stove top oven, home plate, train track"
).split(", ")
ANIMALS = (
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "animal",
    "cub",
)
IRREGULAR = {
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "knives": "knife",
    "wives": "wife",
    "leaves": "leaf",
    "shelves": "shelf",
    "scissors": "scissors",
    "glasses": "glass",
    "skis": "ski",
}
_WORD = re.compile(r"[a-z]+")


def singularize(word: str) -> str:
    """English plural → singular for object nouns (rule-based; see module docstring)."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses", "uses")):
        return word[:-2]
    if word.endswith("oes"):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


@dataclass
class CocoVocabulary:
    """Word → COCO category map built from the reference ``synonyms.txt``."""

    to_category: dict[str, str] = field(default_factory=dict)
    double_words: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_synonyms(cls, path: str | Path) -> CocoVocabulary:
        """Parse ``synonyms.txt`` (errors name the file and line)."""
        vocab = cls()
        for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
            words = [w.strip().lower() for w in line.split(",") if w.strip()]
            if not words:
                continue
            if any(not re.fullmatch(r"[a-z][a-z ]*", w) for w in words):
                raise ValueError(f"{path}:{lineno}: synonyms must be lower-case words separated by commas")
            for w in words:
                vocab.to_category[w] = words[0]
        multi = {w for w in vocab.to_category if " " in w}
        vocab.double_words = {w: w for w in [*DOUBLE_WORDS, *multi]}
        for animal in ANIMALS:
            vocab.double_words[f"baby {animal}"] = animal
            vocab.double_words[f"adult {animal}"] = animal
        for vehicle in ("jet", "train"):
            vocab.double_words[f"passenger {vehicle}"] = vehicle
        vocab.double_words.update({"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"})
        return vocab

    def objects(self, caption: str) -> list[str]:
        """COCO categories mentioned in ``caption``, one per occurrence, in order."""
        words = [singularize(w) for w in _WORD.findall(caption.lower())]
        merged: list[str] = []
        i = 0
        while i < len(words):
            pair = " ".join(words[i : i + 2])
            if i + 1 < len(words) and pair in self.double_words:
                merged.append(self.double_words[pair])
                i += 2
            else:
                merged.append(words[i])
                i += 1
        if "toilet" in merged:
            merged = [w for w in merged if w != "seat"]
        return [self.to_category[w] for w in merged if w in self.to_category]


def chair_scores(mentioned: Sequence[Sequence[str]], truth: Sequence[set[str]]) -> dict[str, Any]:
    """CHAIR-i, CHAIR-s and recall from per-caption object mentions and true object sets."""
    if len(mentioned) != len(truth):
        raise ValueError(f"{len(mentioned)} captions for {len(truth)} ground-truth sets")
    n_mentions = n_hall = n_caps_hall = recalled = n_true = 0
    for objs, gt in zip(mentioned, truth, strict=True):
        hall = [o for o in objs if o not in gt]
        n_mentions += len(objs)
        n_hall += len(hall)
        n_caps_hall += bool(hall)
        recalled += len(gt & set(objs))
        n_true += len(gt)
    return {
        "chair_i": n_hall / n_mentions if n_mentions else 0.0,
        "chair_s": n_caps_hall / len(truth) if truth else 0.0,
        "recall": recalled / n_true if n_true else 0.0,
        "n_captions": len(truth),
        "n_mentions": n_mentions,
        "n_hallucinated": n_hall,
    }


def coco_ground_truth(
    vocab: CocoVocabulary, instances: str | Path, captions: str | Path | None = None
) -> tuple[dict[int, set[str]], dict[int, str]]:
    """``({image_id: categories present}, {image_id: file_name})`` from COCO annotation files."""
    data = json.loads(Path(instances).read_text())
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{instances}: not a COCO instances file (no '{key}')")
    names = {c["id"]: c["name"].lower() for c in data["categories"]}
    files = {int(im["id"]): im["file_name"] for im in data["images"]}
    truth: dict[int, set[str]] = {i: set() for i in files}
    for ann in data["annotations"]:
        name = names.get(ann["category_id"])
        if name is None:
            raise ValueError(
                f"{instances}: annotation {ann.get('id')} has unknown category {ann['category_id']}"
            )
        truth.setdefault(int(ann["image_id"]), set()).add(vocab.to_category.get(name, name))
    if captions is not None:
        for ann in json.loads(Path(captions).read_text()).get("annotations", []):
            truth.setdefault(int(ann["image_id"]), set()).update(vocab.objects(ann["caption"]))
    return truth, files


def run_chair_coco(
    model: LMM,
    processor: MultimodalProcessor,
    synonyms: str | Path,
    instances: str | Path,
    image_dir: str | Path,
    gen: GenerationOptions,
    captions: str | Path | None = None,
    n_images: int = 500,
    seed: int = 0,
    prompt: str = CHAIR_PROMPT,
) -> dict[str, Any]:
    """Caption ``n_images`` COCO images (a seeded sample of the annotated ones) and score CHAIR."""
    vocab = CocoVocabulary.from_synonyms(synonyms)
    truth, files = coco_ground_truth(vocab, instances, captions)
    ids = sorted(i for i in files if (Path(image_dir) / files[i]).is_file())
    if not ids:
        raise FileNotFoundError(f"none of the images of {instances} is in {image_dir}")
    ids = sorted(random.Random(seed).sample(ids, min(n_images, len(ids))))
    examples = [question(str(i), prompt, Path(image_dir) / files[i]) for i in ids]
    caps = answer(model, processor, examples, gen, "chair-coco", max_new_tokens=max(gen.max_new_tokens, 256))
    result = chair_scores([vocab.objects(c) for c in caps], [truth[i] for i in ids])
    result["samples"] = [{"image_id": i, "caption": c} for i, c in zip(ids[:5], caps, strict=False)]
    return result
