"""CHAIR (Rohrbach et al., 2018, https://arxiv.org/abs/1809.02156): object hallucination in captions.

CHAIR-i = hallucinated object mentions / all object mentions (every occurrence counts);
CHAIR-s = captions with ≥ 1 hallucinated object / all captions.

- **ShapeWorld** (exact): :func:`mmalign.shapeworld.judges.chair` against scene graphs.
- **COCO**: the CHAIR authors' synonym list (shipped as ``mmalign/eval/data/coco_synonyms.txt``,
  BSD 2-Clause, source in its header; another file in the same format may be given: one line per
  COCO category, the category first, then its synonyms, comma separated, ``#`` comments),
  ``instances_val2014.json`` (objects in each image) and optionally ``captions_val2014.json``
  (objects named by the human captions count as present too, as in the reference).

Word matching follows the reference's ``utils/chair.py`` (github.com/LisaAnne/Hallucination):
lower-case, tokenise, singularise each word, merge two-word names (``hot dog``, ``teddy bear``,
``traffic light`` …; ``baby``/``adult`` + animal → the animal, ``passenger jet/train`` → the
vehicle, ``bow tie`` → tie, ``toilet seat`` → toilet), drop ``seat`` when ``toilet`` is named, and
map each remaining word in the list to its category. Departures:

- singularisation: pattern.en's ``singularize`` is replaced by rules (irregular plurals such as
  ``people``, ``men``/``women``, ``children``, ``mice``, ``geese``, ``oxen``, ``knives``,
  ``calves``, ``thieves``; ``-ies``, ``-es``, ``-s``) whose candidates are checked against the
  vocabulary: a word already in it is kept (``bus``, ``skis``, ``cattle``), otherwise the first
  candidate in it is taken (``collies`` → collie, ``puppies`` → puppy, ``buses`` → bus). Every
  word of the list and its plural map to the word's category (tested over the whole list);
- every multi-word name of the list is merged, three-word ones too (``stove top oven``, listed by
  the reference but never matched by its two-word merge; ``dining table``, which it matches as
  ``table``, same category), longest first;
- tokens: runs of letters and digits, hyphenated words kept whole as NLTK's ``word_tokenize``
  keeps them (``hot-dog`` is not matched, as in the reference); apostrophes split words.
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
SYNONYMS_FILE = Path(__file__).parent / "data" / "coco_synonyms.txt"
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
# plural ending → singular ending (also inside compounds: policemen, grandchildren, pocketknives)
IRREGULAR_ENDINGS = (
    ("people", "person"),
    ("men", "man"),
    ("children", "child"),
    ("mice", "mouse"),
    ("geese", "goose"),
    ("oxen", "ox"),
    ("feet", "foot"),
    ("teeth", "tooth"),
    ("knives", "knife"),
    ("wives", "wife"),
    ("thieves", "thief"),
    ("calves", "calf"),
    ("halves", "half"),
    ("leaves", "leaf"),
    ("loaves", "loaf"),
    ("shelves", "shelf"),
    ("wolves", "wolf"),
)
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def singular_candidates(word: str) -> list[str]:
    """Possible singulars of ``word``, most specific rule first (``word`` itself excluded)."""
    out = [word[: -len(pl)] + sg for pl, sg in IRREGULAR_ENDINGS if word.endswith(pl)]
    if word.endswith("ies"):
        out += [word[:-3] + "y", word[:-1]]
    if word.endswith("ves"):
        out += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es") and word[:-2].endswith(("ss", "us", "x", "z", "ch", "sh", "o")):
        out.append(word[:-2])  # glasses, buses, boxes, sandwiches, buffaloes (canoes: -s below)
    if word.endswith("sses"):
        out.append(word[:-3])  # busses
    if word.endswith("s") and not word.endswith("ss"):
        out.append(word[:-1])
    if word.endswith("es"):
        out.append(word[:-2])
    return [w for w in dict.fromkeys(out) if w and w != word]


def singularize(word: str) -> str:
    """English plural → singular by rules alone (the first candidate); see :meth:`CocoVocabulary.singular`."""
    if len(word) <= 2:
        return word
    candidates = singular_candidates(word)
    return candidates[0] if candidates else word


@dataclass
class CocoVocabulary:
    """Word → COCO category map of CHAIR (see the module docstring for the matching rules).

    Attributes:
        to_category: word or name (``hot dog``) → COCO category.
        phrases: word tuple (singular) → the name it is read as (``("baby", "bird")`` → ``bird``).
        known: every single word of the vocabulary and of the phrases (singularisation targets).
    """

    to_category: dict[str, str] = field(default_factory=dict)
    phrases: dict[tuple[str, ...], str] = field(default_factory=dict)
    known: frozenset[str] = frozenset()

    @classmethod
    def from_synonyms(cls, path: str | Path | None = None) -> CocoVocabulary:
        """Parse a synonyms file (None: the shipped CHAIR list).

        Raises:
            ValueError: a malformed line (the message names file and line).
        """
        path = Path(path) if path is not None else SYNONYMS_FILE
        vocab = cls()
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if line.lstrip().startswith("#"):
                continue
            words = [" ".join(w.lower().split()) for w in line.split(",") if w.strip()]
            if not words:
                continue
            if any(not re.fullmatch(r"[a-z][a-z ]*", w) for w in words):
                raise ValueError(f"{path}:{lineno}: synonyms must be words separated by commas, got {line!r}")
            for w in words:
                vocab.to_category[w] = words[0]
        if not vocab.to_category:
            raise ValueError(f"{path}: no synonyms")
        names = {w: w for w in [*DOUBLE_WORDS, *(w for w in vocab.to_category if " " in w)]}
        for animal in ANIMALS:
            names[f"baby {animal}"] = names[f"adult {animal}"] = animal
        for vehicle in ("jet", "train"):
            names[f"passenger {vehicle}"] = vehicle
        names.update({"bow tie": "tie", "toilet seat": "toilet"})
        vocab.phrases = {tuple(k.split()): v for k, v in names.items()}
        vocab.known = frozenset(w for name in [*vocab.to_category, *names] for w in name.split())
        return vocab

    def singular(self, word: str) -> str:
        """``word`` when the vocabulary knows it, else its first singular candidate it knows, else ``word``."""
        if word in self.known:
            return word
        return next((c for c in singular_candidates(word) if c in self.known), word)

    def mentions(self, caption: str) -> list[tuple[str, str]]:
        """``(words as matched, COCO category)`` per object mention in ``caption``, in order."""
        words = [self.singular(w) for w in _TOKEN.findall(caption.lower())]
        longest = max((len(p) for p in self.phrases), default=1)
        merged: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(longest, len(words) - i), 1, -1):
                name = self.phrases.get(tuple(words[i : i + n]))
                if name is not None:
                    merged.append(name)
                    i += n
                    break
            else:
                merged.append(words[i])
                i += 1
        if "toilet" in merged:  # "the seat of the toilet" is not a chair
            merged = [w for w in merged if w != "seat"]
        return [(w, self.to_category[w]) for w in merged if w in self.to_category]

    def objects(self, caption: str) -> list[str]:
        """COCO categories mentioned in ``caption``, one per occurrence, in order."""
        return [category for _, category in self.mentions(caption)]


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
    synonyms: str | Path | None,
    instances: str | Path,
    image_dir: str | Path,
    gen: GenerationOptions,
    captions: str | Path | None = None,
    n_images: int = 500,
    seed: int = 0,
    prompt: str = CHAIR_PROMPT,
) -> dict[str, Any]:
    """Caption ``n_images`` COCO images (a seeded sample of the annotated ones) and score CHAIR.

    Args:
        synonyms: synonyms file; None: the shipped CHAIR list.

    Returns:
        :func:`chair_scores`, ``samples`` (the first five captions) and ``records`` (per caption:
        ``image_id``, ``caption``, ``mentioned`` as ``[words, category]`` pairs, ``hallucinated``
        categories, ``truth``).

    Raises:
        FileNotFoundError: none of the annotated images is in ``image_dir``.
    """
    vocab = CocoVocabulary.from_synonyms(synonyms)
    truth, files = coco_ground_truth(vocab, instances, captions)
    ids = sorted(i for i in files if (Path(image_dir) / files[i]).is_file())
    if not ids:
        raise FileNotFoundError(f"none of the images of {instances} is in {image_dir}")
    ids = sorted(random.Random(seed).sample(ids, min(n_images, len(ids))))
    examples = [question(str(i), prompt, Path(image_dir) / files[i]) for i in ids]
    caps = answer(model, processor, examples, gen, "chair-coco", max_new_tokens=max(gen.max_new_tokens, 256))
    found = [vocab.mentions(c) for c in caps]
    result = chair_scores([[cat for _, cat in m] for m in found], [truth[i] for i in ids])
    result["samples"] = [{"image_id": i, "caption": c} for i, c in zip(ids[:5], caps, strict=False)]
    result["records"] = [
        {
            "image_id": i,
            "caption": c,
            "mentioned": [list(pair) for pair in m],
            "hallucinated": [cat for _, cat in m if cat not in truth[i]],
            "truth": sorted(truth[i]),
        }
        for i, c, m in zip(ids, caps, found, strict=True)
    ]
    return result
