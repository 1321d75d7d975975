"""ShapeWorld preference pairs carry the facts LLaVA-RLHF's factually augmented reward prompt needs."""

from __future__ import annotations

import json

from mmalign.preference.formats import load_preferences
from mmalign.preference.reward_model import reward_suffix
from tests.distributed import ROOT


def test_pairs_carry_exact_captions_and_answers_for_the_reward_prompt(tmp_path):
    from mmalign.preference.shapeworld_pairs import build_pairs
    from mmalign.shapeworld import Scene, WorldConfig, detailed_caption, generate

    data = tmp_path / "sw"
    cfg = WorldConfig(annotation_noise=1.0)
    generate(data, n_images=12, n_videos=0, seed=7, cfg=cfg, progress=False)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in build_pairs(data, "train")))
    pairs = load_preferences(path, media_root=data)
    cfg = WorldConfig.from_dict(json.loads((data / "world.json").read_text())["params"]["config"])
    scenes = {
        s["id"]: Scene.from_dict(s)
        for s in map(json.loads, (data / "scenes" / "train.jsonl").read_text().splitlines())
    }
    plain = (ROOT / "configs" / "prompts" / "fact_rlhf_reward.txt").read_text().strip()
    with_answer = (ROOT / "configs" / "prompts" / "fact_rlhf_reward_mc.txt").read_text().strip()
    for p in pairs:
        scene = scenes[p.id.rsplit("-", 1)[0]]
        exact = detailed_caption(Scene(scene.id, scene.objects, scene.background), cfg)
        assert p.meta["captions"] == [exact]  # the exact scene, never the noisy training annotation
        assert exact in reward_suffix(plain, p)[0]["content"]
        if p.meta["task"] == "existence":
            assert p.meta["answer"] == p.chosen
            assert (
                f"The correct answer to the question is: {p.chosen}"
                in reward_suffix(with_answer, p)[0]["content"]
            )
        else:
            assert "answer" not in p.meta
