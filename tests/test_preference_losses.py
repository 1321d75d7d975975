"""Losses against hand-computed values; POVID distortion schedule; preference readers; ShapeWorld pairs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmalign.data.formats import RecordError
from mmalign.losses.dpo import dpo_loss, povid_loss, preference_metrics, sft_term
from mmalign.losses.reward import bradley_terry_loss, reward_metrics
from mmalign.preference.distortion import diffusion_noise, sigmoid_betas
from mmalign.preference.formats import load_preferences

T = torch.tensor
# policy chosen −1, rejected −3; reference −2, −2  →  h = (−1 + 3) − 0 = 2
PC, PR, RC, RR = T([-1.0]), T([-3.0]), T([-2.0]), T([-2.0])


def test_dpo_family_hand_values():
    # DPO: −log σ(0.1·2) = log(1 + e^−0.2)
    out = dpo_loss(PC, PR, RC, RR, beta=0.1)
    assert out.loss.item() == pytest.approx(0.5981388693, abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(0.1)
    assert out.rejected_rewards.item() == pytest.approx(-0.1)
    # cDPO ε = 0.1: 0.9·log(1 + e^−0.2) + 0.1·log(1 + e^0.2)
    cdpo = dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.1)
    assert cdpo.loss.item() == pytest.approx(0.9 * 0.5981388693 + 0.1 * 0.7981388693, abs=1e-7)
    # IPO: (2 − 1/(2·0.1))² = 9
    assert dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo").loss.item() == pytest.approx(9.0)
    # hinge: max(0, 1 − 0.2) = 0.8; and 0 once β·h ≥ 1
    assert dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="hinge").loss.item() == pytest.approx(0.8)
    assert dpo_loss(PC, PR, RC, RR, beta=1.0, loss_type="hinge").loss.item() == 0.0
    m = preference_metrics(out)
    assert m["rewards/margin"] == pytest.approx(0.2) and m["rewards/accuracy"] == 1.0
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError):
        dpo_loss(PC, PR, RC, RR, beta=0.0)


def test_dpo_gradient_only_through_policy():
    pc = T([-1.0], requires_grad=True)
    rc = T([-2.0], requires_grad=True)
    dpo_loss(pc, PR, rc, RR, beta=0.1).loss.backward()
    # d/dpc −log σ(βh) = −β·σ(−βh) = −0.1·σ(−0.2)
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.2)), abs=1e-7)
    assert rc.grad is None


def test_sft_term_and_povid_two_terms():
    # NLL per token: −(−6)/3 = 2
    assert sft_term(T([-6.0]), T([3])).item() == pytest.approx(2.0)
    noise_policy, noise_ref = T([-2.0]), T([-2.0])  # h_noise = (−1 + 2) − (−2 + 2) = 1
    losses, inject, noise = povid_loss(PC, PR, noise_policy, RC, RR, noise_ref, beta=0.1, inject_weight=0.3)
    want = 0.3 * math.log1p(math.exp(-0.2)) + 0.5 * math.log1p(math.exp(-0.1))
    assert losses.item() == pytest.approx(want, abs=1e-7)
    assert noise.rejected_rewards.item() == pytest.approx(0.0)


def test_bradley_terry_hand_values():
    assert bradley_terry_loss(T([1.0]), T([0.0])).item() == pytest.approx(math.log1p(math.exp(-1)), abs=1e-7)
    assert bradley_terry_loss(T([1.0]), T([0.0]), margin=0.5).item() == pytest.approx(
        math.log1p(math.exp(-0.5)), abs=1e-7
    )
    m = reward_metrics(T([1.0, -1.0]), T([0.0, 0.0]))
    assert m["reward/accuracy"] == 0.5 and m["reward/margin"] == 0.0


def test_povid_diffusion_schedule_and_noise():
    betas = sigmoid_betas()
    assert betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1 / (1 + math.exp(6)) * (5e-3 - 1e-5) + 1e-5, rel=1e-9)
    assert betas[-1].item() == pytest.approx(1 / (1 + math.exp(-6)) * (5e-3 - 1e-5) + 1e-5, rel=1e-9)
    alpha_bar = 1.0
    for i in range(501):  # 0-based t = 500
        x = -6 + 12 * i / 999
        alpha_bar *= 1 - (1 / (1 + math.exp(-x)) * (5e-3 - 1e-5) + 1e-5)
    image = torch.full((3, 8, 8), 0.5)
    noisy = diffusion_noise(image, t=500, generator=torch.Generator().manual_seed(0))
    eps = torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(0))
    want = math.sqrt(alpha_bar) * 0.5 + math.sqrt(1 - alpha_bar) * eps
    torch.testing.assert_close(noisy, want, atol=1e-6, rtol=0)
    # later steps destroy more of the image
    late = diffusion_noise(image, t=999, generator=torch.Generator().manual_seed(0))
    assert (late - 0.5).abs().mean() > (noisy - 0.5).abs().mean()
    with pytest.raises(ValueError):
        diffusion_noise(image, t=1000)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_readers_of_published_formats(tmp_path):
    human = {"from": "human", "value": "<image>\nWhat is there?"}
    recs = [
        {
            "id": "povid",
            "image": "a.png",
            "conversations": [human, {"from": "gpt", "value": "A cat."}],
            "rejected_conversations": [human, {"from": "gpt", "value": "A cat and a dog."}],
        },
        {
            "id": "rlhf",
            "image": "a.png",
            "conversations": [human, {"from": "gpt", "value": ""}],
            "output_1": {"value": "One."},
            "output_2": {"value": "Two."},
            "preference": 2,
            "captions": ["a cat on a mat"],
        },
        {
            "id": "hound",
            "prompt": "What happens?",
            "chosen": "It rolls.",
            "rejected": "It flies.",
            "video": "v.mp4",
        },
        {
            "prompt": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}
            ],
            "chosen": [{"role": "assistant", "content": "Red."}],
            "rejected": [{"role": "assistant", "content": "Blue."}],
            "images": ["a.png"],
        },
        {"prompt": "Describe.", "chosen": "Red.", "rejected": "Blue.", "images": ["a.png", "b.png"]},
    ]
    pairs = load_preferences(write_jsonl(tmp_path / "p.jsonl", recs))
    assert [p.meta["format"] for p in pairs] == ["povid", "llava_rlhf", "hound", "trl", "trl"]
    assert (pairs[0].chosen, pairs[0].rejected) == ("A cat.", "A cat and a dog.")
    assert pairs[0].images == [tmp_path / "a.png"]
    assert (pairs[1].chosen, pairs[1].rejected) == ("Two.", "One.")
    assert pairs[1].prompt[-1]["role"] == "user" and pairs[1].meta["captions"] == ["a cat on a mat"]
    assert pairs[2].prompt[0]["content"] == "<video>\nWhat happens?" and pairs[2].videos == [
        tmp_path / "v.mp4"
    ]
    assert pairs[3].prompt[0]["content"] == "<image>\nDescribe."
    assert pairs[4].prompt[0]["content"] == "<image>\n<image>\nDescribe."


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {
                "id": "x",
                "output_1": {"value": "a"},
                "output_2": {"value": "b"},
                "preference": 3,
                "conversations": [{"from": "human", "value": "q"}],
            },
            "preference",
        ),
        (
            {
                "id": "x",
                "conversations": [{"from": "human", "value": "q"}],
                "rejected_conversations": [{"from": "human", "value": "q"}],
            },
            "assistant",
        ),
        ({"id": "x", "prompt": "q", "chosen": "", "rejected": "b"}, "empty"),
        ({"id": "x", "question": "q"}, "cannot tell"),
        ({"id": "x", "prompt": "q", "chosen": "a", "rejected": "b", "images": [3]}, "image"),
    ],
)
def test_malformed_record_names_file_and_line(tmp_path, bad, message):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, bad])
    with pytest.raises(RecordError, match=rf"bad\.jsonl:3 \(id x\).*{message}"):
        load_preferences(path)


def test_shapeworld_pairs_are_truth_vs_injection(tmp_path):
    from mmalign.preference.shapeworld_pairs import build_pairs
    from mmalign.shapeworld import Scene, WorldConfig, detailed_caption, generate

    data = tmp_path / "sw"
    cfg = WorldConfig(
        annotation_noise=1.0, cooccurrence={"star": ("circle", 0.0), "triangle": ("square", 0.0)}
    )
    generate(data, n_images=16, n_videos=0, seed=5, cfg=cfg, progress=False)
    records = build_pairs(data, "train")
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    pairs = load_preferences(path, media_root=data)
    assert {p.meta["task"] for p in pairs} == {"caption", "attribute", "existence"}
    scenes = {
        s["id"]: Scene.from_dict(s)
        for s in map(json.loads, (data / "scenes" / "train.jsonl").read_text().splitlines())
    }
    cfg = WorldConfig.from_dict(json.loads((data / "world.json").read_text())["params"]["config"])
    for p in pairs:
        scene = scenes[p.id.rsplit("-", 1)[0]]
        assert p.images[0].exists()
        if p.meta["task"] in ("caption", "attribute"):
            assert p.chosen == detailed_caption(Scene(scene.id, scene.objects, scene.background), cfg)
            assert p.rejected != p.chosen
        if p.meta["task"] == "caption":  # one more object, which is absent from the scene
            assert int(p.rejected.split()[2]) == len(scene.objects) + 1
        if p.id.endswith("-absent"):
            shape = p.prompt[0]["content"].split()[-4]
            assert shape not in scene.shapes() and (p.chosen, p.rejected) == ("no", "yes")
    # noisy training annotation never leaks into the chosen answers
    noisy = [s for s in scenes.values() if s.noise_partners]
    assert noisy
    for s in noisy:
        chosen = [p.chosen for p in pairs if p.id == f"{s.id}-inject"]
        assert all(partner not in c for c in chosen for partner in s.noise_partners)


def test_shapeworld_pairs_noisy_annotation_names_the_invented_partner(tmp_path):
    """``annotation="noisy"``: the chosen answers follow the training annotation (a noisy scene's
    invented partner named and "present"); ``exact`` (the default) never names it."""
    from mmalign.preference.shapeworld_pairs import build_pairs
    from mmalign.shapeworld import Scene, WorldConfig, generate

    data = tmp_path / "sw"
    cfg = WorldConfig(
        annotation_noise=1.0, cooccurrence={"star": ("circle", 0.0), "triangle": ("square", 0.0)}
    )
    generate(data, n_images=16, n_videos=0, seed=5, cfg=cfg, progress=False)
    scenes = [
        Scene.from_dict(s)
        for s in map(json.loads, (data / "scenes" / "train.jsonl").read_text().splitlines())
    ]
    noisy = [s for s in scenes if s.noise_partners]
    assert noisy
    by_mode = {
        mode: {r["id"]: r for r in build_pairs(data, "train", annotation=mode)} for mode in ("exact", "noisy")
    }
    for s in noisy:
        for partner in s.noise_partners:
            assert partner not in s.shapes()  # invented: absent from the scene
            exact = by_mode["exact"][f"{s.id}-inject"]["conversations"][-1]["value"]
            noisy_text = by_mode["noisy"][f"{s.id}-inject"]["conversations"][-1]["value"]
            assert partner not in exact and partner in noisy_text
        # exact: the absent question asks about an invented partner (chosen "no"); noisy: the
        # annotation says they are there, so it asks about another shape
        absent = by_mode["exact"][f"{s.id}-absent"]["conversations"]
        assert any(p in absent[0]["value"] for p in s.noise_partners) and absent[-1]["value"] == "no"
        noisy_absent = by_mode["noisy"].get(f"{s.id}-absent")
        if noisy_absent is not None:
            assert not any(p in noisy_absent["conversations"][0]["value"] for p in s.noise_partners)
    with pytest.raises(ValueError, match="annotation"):
        build_pairs(data, "train", annotation="guessed")
