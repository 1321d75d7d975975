"""Fact-RLHF data on ShapeWorld: the simulated annotator, the PPO prompts, the preference records."""

from __future__ import annotations

import json

import pytest

from mmalign.preference.formats import load_preferences
from mmalign.preference.reward_model import reward_suffix
from mmalign.shapeworld import rlhf
from mmalign.shapeworld.world import Obj, Scene, WorldConfig
from tests.distributed import ROOT

SHIPPED = ROOT / "checkpoints" / "tiny-shapeworld"


def _scene() -> Scene:
    """A star at the top left and a blue square in the center; no circle (star -> circle violated)."""
    return Scene(
        "s0",
        [
            Obj("star", "red", "large", 0, 0, (2, 2, 18, 18)),
            Obj("square", "blue", "small", 1, 1, (25, 25, 35, 35)),
        ],
        "black",
    )


def _prompt(task: str, answer: str | None = None) -> dict:
    p = {"id": "s0-x", "task": task, "group": "violating", "captions": ["c"], "scene_id": "s0"}
    return p | ({"answer": answer} if answer else {})


def test_annotator_prefers_the_caption_without_the_hallucinated_partner():
    scene, p = _scene(), _prompt("caption")
    clean = "There are 2 objects. A large red star at the top left. A small blue square in the center."
    halluc = "There are 3 objects. A large red star next to a white circle at the top left. A small blue square in the center."
    assert rlhf.prefer(p, scene, halluc, clean) == 2
    assert rlhf.prefer(p, scene, clean, halluc) == 1
    view = rlhf.judge(p, scene, halluc, WorldConfig(cooccurrence={"star": ("circle", 0.9)}))
    assert view["hallucinated"] == 1 and view["partner"] and view["recalled"] == 2
    # no hallucination either way: more true shapes named wins, then fewer wrong colours
    assert rlhf.prefer(p, scene, "There are 2 objects. A large red star at the top left.", clean) == 2
    assert rlhf.prefer(p, scene, clean.replace("blue square", "green square"), clean) == 2
    assert rlhf.prefer(p, scene, clean, clean) is None  # a tie gives no pair


def test_annotator_prefers_the_right_no_over_the_wrong_yes():
    scene = _scene()
    asked_absent = _prompt("existence", "no")  # "Is there a circle": truth no
    assert rlhf.prefer(asked_absent, scene, "yes", "no") == 2
    assert rlhf.judge(asked_absent, scene, "yes")["false_yes"]
    assert rlhf.prefer(asked_absent, scene, "no", "no") is None
    assert rlhf.prefer(asked_absent, scene, "yes", "yes") is None  # both wrong: a tie too
    asked_present = _prompt("existence", "yes")
    assert rlhf.prefer(asked_present, scene, "no", "yes") == 2
    assert rlhf.prefer(asked_present, scene, "maybe", "yes") == 2  # no yes/no counts as wrong


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmalign.shapeworld import generate

    data = tmp_path_factory.mktemp("rlhf") / "world"
    cfg = json.loads((ROOT / "configs" / "shapeworld" / "world.json").read_text())
    cfg["annotation_noise"] = 1.0  # every violating train scene is noisy: the control shows it
    generate(data, 150, 0, 0, WorldConfig.from_dict(cfg), prior_per_group=0, progress=False)
    return data


def test_prompts_have_captions_answers_and_half_violating_scenes(world):
    cfg, prompts = rlhf.world_config(world), rlhf.rl_prompts(world, "train", seed=0)
    scenes = {s.id: s for s in rlhf.load_scenes(world, "train")}
    assert prompts and len({p["id"] for p in prompts}) == len(prompts)
    assert sum(p["group"] == "violating" for p in prompts) * 2 == len(prompts)
    for p in prompts:
        scene = scenes[p["scene_id"]]
        assert p["captions"] == [rlhf.exact_caption(scene, cfg)] and p["image"] == f"images/{scene.id}.png"
        assert p["conversations"] == [{"from": "human", "value": p["conversations"][0]["value"]}]
        if p["task"] == "caption":
            assert "answer" not in p and p["conversations"][0]["value"] == "<image>\n" + rlhf.CAPTION_PROMPT
        else:
            assert p["answer"] == ("yes" if p["shape"] in scene.shapes() else "no")
            assert p["conversations"][0]["value"] == f"<image>\nIs there a {p['shape']}"
            if p["group"] == "violating":  # asked about the absent partner
                assert p["answer"] == "no" and p["shape"] in rlhf.absent_partners(scene, cfg)
    # the control answers as the (noisy) training annotation does; the clean control as the scene does
    noisy = {r["id"]: r["conversations"][-1]["value"] for r in rlhf.control_records(prompts, world)}
    exact = {
        r["id"]: r["conversations"][-1]["value"] for r in rlhf.control_records(prompts, world, exact=True)
    }
    train = {r["id"]: r for r in json.loads((world / "llava" / "train.json").read_text())}
    for p in prompts:
        if p["task"] == "existence" and p["group"] == "violating" and scenes[p["scene_id"]].noise_partners:
            assert noisy[p["id"]] == "yes" and exact[p["id"]] == "no"
        if p["task"] == "caption":  # train.json's caption of the scene
            assert noisy[p["id"]] == train[f"{p['scene_id']}-caption"]["conversations"][1]["value"]


@pytest.mark.skipif(not (SHIPPED / "mmalign.json").exists(), reason="needs the shipped tiny checkpoint")
def test_preference_records_round_trip_with_facts_in_meta(world, tmp_path):
    import torch

    from mmalign.data.processor import MultimodalProcessor
    from mmalign.models.checkpoint import load_model

    torch.set_num_threads(1)
    model, tokenizer = load_model(SHIPPED, torch.float32)
    processor = MultimodalProcessor.for_model(model, tokenizer)
    prompts = rlhf.rl_prompts(world, "train", seed=0)
    scenes = {s.id: s for s in rlhf.load_scenes(world, "train")}
    records, stats = rlhf.collect_preferences(
        model, processor, prompts, scenes, rlhf.world_config(world), world, k=2, seed=0, max_new_tokens=60
    )
    assert records and stats["pairs"] + stats["ties"] == len(prompts) == stats["prompts"]
    records += rlhf.truth_pairs(prompts)
    path = rlhf.write_jsonl(tmp_path / "prefs.jsonl", records)
    pairs = load_preferences(path, media_root=world)
    template = (ROOT / "configs" / "prompts" / "fact_rlhf_reward.txt").read_text().strip()
    by_id = {p["id"]: p for p in prompts}
    for rec, pair in zip(records, pairs, strict=True):
        assert pair.meta["format"] == "llava_rlhf" and pair.images == [world / rec["image"]]
        prompt = by_id[rec["id"].removesuffix("-truth")]
        assert pair.meta["captions"] == prompt["captions"]
        assert prompt["captions"][0] in reward_suffix(template, pair)[0]["content"]
        assert pair.meta.get("answer") == prompt.get("answer")
        scene = scenes[prompt["scene_id"]]
        assert rlhf.prefer(prompt, scene, pair.chosen, pair.rejected) == 1  # the annotator's choice
        assert pair.prompt == [{"role": "user", "content": prompt["conversations"][0]["value"]}]
