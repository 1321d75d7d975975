"""Data and reward-model evaluation for Fact-RLHF (LLaVA-RLHF) on ShapeWorld, judged exactly.

LLaVA-RLHF (https://arxiv.org/abs/2309.14525) trains a reward model on human preferences between
two answers of the SFT model and, for *factual augmentation*, shows it the image's ground-truth
captions. Here the humans are a simulated annotator who sees the scene graph:

- :func:`rl_prompts` — PPO prompts ``{id, image, conversations: [human], captions, answer?,
  scene_id, task, group, shape?}`` over one split: for each chosen scene a caption prompt
  (``Describe the image in detail.``, the prompt of the bars) and an existence question in the
  shipped model's terse wording (``Is there a circle``). Every scene that violates a co-occurrence
  rule (trigger shown, partner absent; ``group: violating``) is taken and asked about its absent
  partner — where the SFT model says "yes" — and as many other scenes (``group: other``) are
  drawn, asked one of their exact existence questions (half yes, half no). ``captions`` is the
  exact detailed caption; ``answer`` the true yes/no of existence items.
- :func:`control_records` — the same prompts answered as the dataset's training annotation
  answers them (``llava/train.json``: noisy on the train split), or exactly: the data of a
  same-budget SFT control continuation.
- :func:`prefer` — the annotator: existence answers by correctness; captions by fewer
  hallucinated shape mentions, then more true shapes named, then fewer wrong colours. A tie
  gives no pair (ties are dropped and counted, not broken at random).
- :func:`collect_preferences` — K samples per prompt (temperature 1.0) of the SFT model; the best
  and the worst sample by the annotator form one LLaVA-RLHF record ``{id, image, conversations,
  output_1, output_2, preference, captions, answer?, ...}`` (K = 2: the two samples).
- :func:`reward_accuracy_by_group` — held-out accuracy of an exported reward model
  (``final/`` + ``reward_head.safetensors``) on such records, overall and per task × group.

The command line is ``data_builders/shapeworld_rlhf.py``.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mmalign.shapeworld.captions import DETAILED_PROMPTS, annotated_objects, detailed_caption
from mmalign.shapeworld.parsing import answer_yes_no, parse_mentions
from mmalign.shapeworld.qa import existence_question
from mmalign.shapeworld.world import Scene, WorldConfig

CAPTION_PROMPT = DETAILED_PROMPTS[0]  # "Describe the image in detail." (mmalign.eval.bars.CAPTION_PROMPT)
GROUPS = ("violating", "other")
TASKS = ("caption", "existence")
FACTS = ("captions", "answer", "shape", "scene_id", "task", "group")  # prompt fields a pair keeps


# --------------------------------------------------------------------------------------- data


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl(path: str | Path, records: Sequence[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def world_config(data_dir: str | Path) -> WorldConfig:
    """The :class:`WorldConfig` a generated dataset was made with (its ``world.json``)."""
    params = json.loads((Path(data_dir) / "world.json").read_text())["params"]
    return WorldConfig.from_dict(params["config"])


def load_scenes(data_dir: str | Path, split: str) -> list[Scene]:
    """The image scenes of ``scenes/<split>.jsonl`` (videos skipped)."""
    rows = read_jsonl(Path(data_dir) / "scenes" / f"{split}.jsonl")
    return [Scene.from_dict(r) for r in rows if r.get("kind", "image") == "image"]


def absent_partners(scene: Scene, cfg: WorldConfig) -> list[str]:
    """Partners of the rules the scene violates (trigger shown, partner absent), sorted."""
    shapes = scene.shapes()
    return sorted({p for t, (p, _) in cfg.cooccurrence.items() if t in shapes and p not in shapes})


def exact_caption(scene: Scene, cfg: WorldConfig) -> str:
    """The exact detailed caption (no noise partners): the fact the reward prompt lists."""
    return detailed_caption(replace(scene, noise_partners=[]), cfg)


def _prompt(rid: str, scene: Scene, text: str, task: str, group: str, caption: str, **extra: Any) -> dict:
    return {
        "id": rid,
        "image": f"images/{scene.id}.png",
        "conversations": [{"from": "human", "value": f"<image>\n{text}"}],
        "captions": [caption],
        **extra,
        "scene_id": scene.id,
        "task": task,
        "group": group,
    }


def rl_prompts(
    data_dir: str | Path,
    split: str,
    max_violating: int | None = None,
    other_per_violating: float = 1.0,
    seed: int = 0,
) -> list[dict]:
    """PPO prompts over ``split``'s scenes: violating scenes (asked about the absent partner) and
    as many other scenes (asked an exact existence question), a caption prompt for each scene.

    Args:
        max_violating: keep at most this many violating scenes (None: all).
        other_per_violating: other scenes drawn per violating scene.
        seed: seeds the choice of other scenes, of the partner asked when a scene violates two
            rules, and of each other scene's question.

    Returns:
        Records sorted by scene (caption first); ``len = 2 · scenes``.
    """
    cfg, rng = world_config(data_dir), random.Random(f"{seed}:rlhf-prompts:{split}")
    scenes = load_scenes(data_dir, split)
    violating = [s for s in scenes if absent_partners(s, cfg)][:max_violating]
    others = [s for s in scenes if not absent_partners(s, cfg)]
    others = rng.sample(others, min(len(others), round(len(violating) * other_per_violating)))
    chosen = {s.id for s in violating} | {s.id for s in others}
    out = []
    for scene in scenes:
        if scene.id not in chosen:
            continue
        group, caption = ("violating" if absent_partners(scene, cfg) else "other"), exact_caption(scene, cfg)
        if group == "violating":
            shape = rng.choice(absent_partners(scene, cfg))
        else:  # balanced: a present shape or an absent one, with equal chance
            present = sorted(scene.shapes())
            absent = [s for s in cfg.shapes if s not in scene.shapes()]
            pool = present if (rng.random() < 0.5 and present) or not absent else absent
            shape = rng.choice(sorted(pool))
        answer = "yes" if shape in scene.shapes() else "no"
        out.append(_prompt(f"{scene.id}-rl-caption", scene, CAPTION_PROMPT, "caption", group, caption))
        question, rid = existence_question(shape, "image", cfg), f"{scene.id}-rl-exist"
        out.append(_prompt(rid, scene, question, "existence", group, caption, answer=answer, shape=shape))
    return out


def control_records(
    prompts: Sequence[dict], data_dir: str | Path, split: str = "train", exact: bool = False
) -> list[dict]:
    """SFT records (LLaVA format) answering ``prompts`` as the dataset's annotation does.

    On the train split the annotation is noisy (``llava/train.json``): a noisy scene's caption
    names the invented partner and its existence answer about the partner is "yes" — the answers
    that record would have in ``train.json``. ``exact=True`` answers with the scene graph instead
    (``llava/train_clean.json``'s answers; the facts the reward prompt lists).
    """
    cfg = world_config(data_dir)
    scenes = {s.id: s for s in load_scenes(data_dir, split)}
    noisy = split == "train" and not exact
    out = []
    for p in prompts:
        scene = scenes[p["scene_id"]]
        if p["task"] == "caption":
            answer = detailed_caption(scene, cfg, noisy)
        else:
            annotated = {o.shape for o in annotated_objects(scene, cfg, noisy)}
            answer = "yes" if p["shape"] in annotated else "no"
        turns = [*p["conversations"], {"from": "gpt", "value": answer}]
        out.append({k: p[k] for k in ("id", "image", "task", "scene_id")} | {"conversations": turns})
    return out


# -------------------------------------------------------------------------------- annotator


def judge(prompt: dict, scene: Scene, text: str, cfg: WorldConfig | None = None) -> dict[str, Any]:
    """The annotator's view of one answer: for existence ``correct`` / ``false_yes``; for captions
    ``hallucinated`` (mentions of absent shapes), ``recalled`` (true shapes named),
    ``color_wrong`` (mentions of a present shape in a colour none of its objects has) and
    ``partner`` (an absent co-occurrence partner is named; not used for the preference)."""
    if prompt["task"] == "existence":
        said = answer_yes_no(text)
        truth = prompt["answer"] == "yes"
        return {"correct": said is truth, "false_yes": said is True and not truth}
    mentions, present = parse_mentions(text), scene.shapes()
    colors = {s: {o.color for o in scene.objects if o.shape == s} for s in present}
    return {
        "hallucinated": sum(m.shape not in present for m in mentions),
        "recalled": len(present & {m.shape for m in mentions}),
        "color_wrong": sum(
            m.shape in present and m.color is not None and m.color not in colors[m.shape] for m in mentions
        ),
        "partner": any(m.shape in absent_partners(scene, cfg or WorldConfig()) for m in mentions),
    }


def _score(view: dict[str, Any]) -> tuple:
    """Higher is better."""
    if "correct" in view:
        return (view["correct"],)
    return (-view["hallucinated"], view["recalled"], -view["color_wrong"])


def prefer(prompt: dict, scene: Scene, a: str, b: str) -> int | None:
    """1 if the annotator prefers ``a``, 2 if ``b``, None on a tie (no pair)."""
    sa, sb = _score(judge(prompt, scene, a)), _score(judge(prompt, scene, b))
    return None if sa == sb else 1 if sa > sb else 2


# ------------------------------------------------------------------------ the SFT model's pairs


def collect_preferences(
    model: Any,
    processor: Any,
    prompts: Sequence[dict],
    scenes: dict[str, Scene],
    cfg: WorldConfig,
    media_root: str | Path,
    k: int = 2,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int = 80,
) -> tuple[list[dict], dict[str, Any]]:
    """The SFT model's own answers (K samples per prompt, temperature 1.0), judged into pairs.

    For each prompt the best and the worst of its K samples by :func:`prefer`'s order form the
    pair (K = 2: the two samples), in sampling order as ``output_1`` / ``output_2``; equal scores
    (a tie, identical texts included) give no pair. Existence answers get 8 new tokens.

    Returns:
        LLaVA-RLHF records (``conversations`` ends with ``output_1`` as its ignored gpt turn;
        ``judge_1`` / ``judge_2`` hold the annotator's view) and statistics: pairs and ties per
        task × group, the share of pairs whose preferred answer is the non-hallucinating one
        (``clean_over_hallucinated``), and sample rates (false "yes", captions with a hallucinated
        shape, captions naming an absent partner; per group).
    """
    import torch

    from mmalign.data.formats import Example
    from mmalign.training.generation import GenerationConfig, generate

    gen = torch.Generator().manual_seed(seed)
    texts: dict[str, list[str]] = {}
    for task, new_tokens in (("caption", max_new_tokens), ("existence", 8)):
        batch = [p for p in prompts if p["task"] == task]
        examples = [
            Example(
                id=p["id"],
                messages=[{"role": "user", "content": p["conversations"][0]["value"]}],
                images=[Path(media_root) / p["image"]],
            )
            for p in batch
        ]
        if not examples:
            continue
        out = generate(
            model,
            processor,
            examples,
            GenerationConfig(do_sample=True, temperature=1.0, max_new_tokens=new_tokens),
            num_samples=k,
            batch_size=batch_size,
            generator=gen,
        )
        for i, p in enumerate(batch):
            texts[p["id"]] = out.texts[i * k : (i + 1) * k]
    records, counts, rates = [], defaultdict(Counter), defaultdict(Counter)
    for p in prompts:
        scene, samples = scenes[p["scene_id"]], texts[p["id"]]
        views = [judge(p, scene, t, cfg) for t in samples]
        key = f"{p['task']}/{p['group']}"
        c, r = counts[key], rates[key]
        c["prompts"] += 1
        for v in views:
            r["samples"] += 1
            if p["task"] == "existence":
                r["false_yes"] += v["false_yes"]
                r["wrong"] += not v["correct"]
            else:
                r["hallucinated"] += v["hallucinated"] > 0
                r["partner"] += v["partner"]
        scores = [_score(v) for v in views]
        best, worst = scores.index(max(scores)), scores.index(min(scores))
        if scores[best] == scores[worst]:
            c["ties"] += 1
            continue
        i, j = sorted((best, worst))
        c["pairs"] += 1
        chosen, rejected = views[best], views[worst]
        if p["task"] == "existence":
            c["clean_over_hallucinated"] += rejected["false_yes"]
            c["chosen_yes"] += p["answer"] == "yes"
        else:
            c["clean_over_hallucinated"] += chosen["hallucinated"] == 0 < rejected["hallucinated"]
        rec = {
            "id": p["id"],
            "image": p["image"],
            "conversations": [*p["conversations"], {"from": "gpt", "value": samples[i]}],
            "output_1": {"value": samples[i]},
            "output_2": {"value": samples[j]},
            "preference": 1 if best == i else 2,
            **{f: p[f] for f in FACTS if f in p},
            "judge_1": views[i],
            "judge_2": views[j],
        }
        records.append(rec)
    stats: dict[str, Any] = {"k": k, "prompts": len(prompts), "pairs": len(records)}
    stats["ties"] = sum(c["ties"] for c in counts.values())
    stats["clean_over_hallucinated"] = sum(c["clean_over_hallucinated"] for c in counts.values())
    stats["by_group"] = {key: dict(c) for key, c in sorted(counts.items())}
    stats["sample_rates"] = {
        key: {n: v / r["samples"] for n, v in r.items() if n != "samples"} | {"samples": r["samples"]}
        for key, r in sorted(rates.items())
    }
    return records, stats


def truth_pairs(prompts: Sequence[dict]) -> list[dict]:
    """("yes", "no") preference records of the existence prompts, preferred by the true answer: a
    probe of whether a reward model rewards correctness or one answer word (the SFT model's own
    pairs almost never prefer "yes": it errs on present shapes too rarely to make such pairs)."""
    out = []
    for p in prompts:
        if p["task"] != "existence":
            continue
        rec = {
            "id": p["id"] + "-truth",
            "image": p["image"],
            "conversations": [*p["conversations"], {"from": "gpt", "value": "yes"}],
            "output_1": {"value": "yes"},
            "output_2": {"value": "no"},
            "preference": 1 if p["answer"] == "yes" else 2,
        }
        out.append(rec | {f: p[f] for f in FACTS if f in p})
    return out


# ------------------------------------------------------------------- reward-model evaluation


def reward_accuracy_by_group(
    model_dir: str | Path,
    prefs_path: str | Path,
    media_root: str | Path,
    reward_prompt: str | Path | None,
    max_length: int = 512,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Share of pairs whose preferred answer the exported reward model scores higher.

    One process; the reward prompt is filled as ``train/reward.py`` fills it (same ``seed``).

    Returns:
        ``accuracy``, ``n``, ``by_group`` (``"<task>/<group>"``, ``"<task>"`` and ``"<group>"``
        → ``{accuracy, n}``) and ``margin`` (mean r_chosen − r_rejected).
    """
    import torch

    from mmalign.data.processor import MultimodalProcessor
    from mmalign.preference.batch import collate_shared, encode_pair
    from mmalign.preference.formats import load_preferences
    from mmalign.preference.reward_model import load_reward_model, reward_suffix

    model, tokenizer = load_reward_model(model_dir, torch.float32)
    processor = MultimodalProcessor.for_model(model.lmm, tokenizer)
    template = Path(reward_prompt).read_text().strip() if reward_prompt else None
    pairs = load_preferences(prefs_path, "llava_rlhf", media_root)
    wins, margins = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            enc = [
                encode_pair(
                    processor, p, max_length, suffix=reward_suffix(template, p, seed) if template else None
                )
                for p in chunk
            ]
            r = model(
                collate_shared(enc, processor.pad_token_id).to(torch.device("cpu"), torch.float32)
            ).float()
            wins += (r[:, 0] > r[:, 1]).tolist()
            margins += (r[:, 0] - r[:, 1]).tolist()
    groups: dict[str, list[bool]] = defaultdict(list)
    for p, w in zip(pairs, wins, strict=True):
        task, group = p.meta.get("task", "?"), p.meta.get("group", "?")
        keys = [f"{task}/{group}", task, group]
        if task == "existence" and "answer" in p.meta:
            keys += [f"existence/answer={p.meta['answer']}", f"existence/{group}/answer={p.meta['answer']}"]
        for key in keys:
            groups[key].append(w)
    return {
        "accuracy": sum(wins) / len(wins) if wins else 0.0,
        "n": len(wins),
        "margin": sum(margins) / len(margins) if margins else 0.0,
        "by_group": {k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(groups.items())},
    }
