"""The method steps as library functions (no subprocess): :mod:`mmalign.preference.step` and
:func:`mmalign.training.sft_step.sft_step` — values by hand, POVID chosen by the config, the steps on a
real tiny model against the pieces they are made of."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from PIL import Image

from mmalign.data.processor import MultimodalProcessor
from mmalign.losses.dpo import dpo_loss
from mmalign.preference.batch import collate_shared, encode_pair
from mmalign.preference.config import DPOConfig, PovidConfig
from mmalign.preference.formats import PreferencePair
from mmalign.preference.reward_model import RewardModel
from mmalign.preference.scoring import PreferenceModel
from mmalign.preference.step import preference_loss, preference_step, reward_step


def test_dpo_loss_by_hand_with_sft_term_and_averaging():
    pol = torch.tensor([[-2.0, -5.0]])
    ref = torch.tensor([[-3.0, -4.0]])
    lengths = torch.tensor([[2, 4]])
    loss, m = preference_loss(pol, ref, lengths, DPOConfig(beta=0.5, sft_weight=0.25))
    h = (-2 + 5) - (-3 + 4)  # 2
    expected = -math.log(1 / (1 + math.exp(-0.5 * h))) + 0.25 * (2.0 / 2)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert m["sft_nll"] == pytest.approx(1.0) and m["rewards/accuracy"] == 1.0
    # length-averaged log-probs (IPO's convention): h = (-1 + 1.25) - (-1.5 + 1) = 0.75
    loss, _ = preference_loss(pol, ref, lengths, DPOConfig(beta=0.5, loss_type="ipo", average_log_prob=True))
    assert float(loss) == pytest.approx((0.75 - 1 / (2 * 0.5)) ** 2, abs=1e-6)


def test_povid_is_chosen_by_the_config_not_the_shape():
    povid = DPOConfig(reference="frozen", povid=PovidConfig(inject_weight=0.5, noise_weight=0.5))
    pol, ref = torch.tensor([[-1.0, -3.0, -2.0]]), torch.tensor([[-2.0, -2.0, -2.0]])
    loss, m = preference_loss(pol, ref, torch.ones(1, 3), povid)
    inject = dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1]).loss
    noise = dpo_loss(pol[:, 0], pol[:, 2], ref[:, 0], ref[:, 2]).loss
    assert float(loss) == pytest.approx(float(0.5 * inject + 0.5 * noise), abs=1e-6)
    assert "noise/rewards/margin" in m
    with pytest.raises(ValueError, match="POVID.*3 responses.*has 2"):
        preference_loss(pol[:, :2], ref[:, :2], torch.ones(1, 2), povid)
    with pytest.raises(ValueError, match="DPO needs 2 responses.*has 3"):
        preference_loss(pol, ref, torch.ones(1, 3), DPOConfig())


def _pairs(folder) -> list[PreferencePair]:
    """Two image pairs (the images written to ``folder``)."""
    pairs = []
    for i, (q, c, r) in enumerate([("Is there a star?", "Yes.", "No."), ("What colour?", "Red.", "Blue.")]):
        Image.new("RGB", (40, 40), (60 * i, 90, 200)).save(folder / f"{i}.png")
        prompt = [{"role": "user", "content": "<image>\n" + q}]
        pairs.append(PreferencePair(f"p{i}", prompt, c, r, images=[folder / f"{i}.png"]))
    return pairs


@pytest.fixture()
def batch_parts(tiny_model, tokenizer, tmp_path):
    pairs = _pairs(tmp_path)
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    batch = collate_shared([encode_pair(processor, p) for p in pairs], processor.pad_token_id)
    return processor, batch


def test_preference_step_online_and_precomputed_reference_agree(tiny_model, batch_parts):
    _, batch = batch_parts
    reference = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in tiny_model.llm.parameters():
            p.add_(0.02 * torch.randn_like(p))
    online = PreferenceModel(tiny_model, "frozen", reference)
    cfg = DPOConfig(reference="frozen", sft_weight=0.5)
    loss, metrics = preference_step(online, batch, None, cfg)
    ref_logps = PreferenceModel(reference, "none")(batch)["policy"].detach()
    loss2, metrics2 = preference_step(PreferenceModel(tiny_model, "none"), batch, ref_logps, cfg)
    assert float(loss) == pytest.approx(float(loss2), abs=1e-5)
    assert metrics["rewards/margin"] == pytest.approx(metrics2["rewards/margin"], abs=1e-5)
    assert metrics["rewards/margin"] != 0.0  # the perturbed policy differs from its reference
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.llm.parameters())
    with pytest.raises(ValueError, match="no reference"):
        preference_step(PreferenceModel(tiny_model, "none"), batch, None, cfg)


def test_precomputed_reference_caches_sums_and_per_token_logps(tiny_model, tokenizer, tmp_path):
    """What train/dpo.py's default reference writes: sums for DPO and each response's tokens."""
    from mmalign.preference.step import precomputed_reference
    from mmalign.training.strategy import Strategy, StrategyConfig

    pairs = _pairs(tmp_path)
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    scorer = PreferenceModel(tiny_model, "none")
    cfg = DPOConfig(model="tiny-in-memory", max_length=256)
    strategy = Strategy(StrategyConfig(micro_batch_size=2))  # one process, no DeepSpeed engine needed
    cache, keys, note = precomputed_reference(strategy, scorer, processor, pairs, cfg, tmp_path / "cache")
    assert "2 computed" in note and len(keys) == 2
    batch = collate_shared([encode_pair(processor, p) for p in pairs], processor.pad_token_id)
    with torch.no_grad():
        out = scorer(batch)
    torch.testing.assert_close(cache.get(keys), out["policy"], atol=1e-5, rtol=1e-6)
    for got, want in zip(cache.get_tokens(keys), batch.split_by_sequence(out["token_logps"]), strict=True):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_reward_step_zero_head_is_log2_then_learns(tiny_model, batch_parts):
    _, batch = batch_parts
    model = RewardModel(tiny_model)
    loss, metrics = reward_step(model, batch, 0.0)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)  # zero-initialised head: r = 0
    assert metrics["reward/margin"] == 0.0
    opt = torch.optim.SGD(model.head.parameters(), lr=0.5)
    for _ in range(5):
        loss, metrics = reward_step(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(reward_step(model, batch)[0]) < math.log(2) - 1e-3


def test_sft_step_is_the_models_loss_and_counts_tokens(tiny_model, tokenizer):
    from mmalign.data.formats import Example
    from mmalign.training.sft_step import sft_step

    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    examples = [
        Example(
            "a", [{"role": "user", "content": "Is there a star?"}, {"role": "assistant", "content": "No."}]
        ),
        Example(
            "b", [{"role": "user", "content": "Colour?"}, {"role": "assistant", "content": "Red. It is red."}]
        ),
    ]
    batch = processor.collate([processor.encode(e, 64) for e in examples])
    for reduction in ("token", "example"):
        loss, metrics = sft_step(tiny_model, batch, torch.device("cpu"), torch.float32, reduction)
        direct = tiny_model(
            batch["input_ids"], batch["attention_mask"], labels=batch["labels"], loss_reduction=reduction
        )
        assert float(loss) == pytest.approx(float(direct["loss"]), abs=1e-6)
        assert metrics == {"tokens": float(batch["attention_mask"].sum())}


def test_reward_accuracy_counts_each_pair_once_and_ranks_run_alike(tiny_model, batch_parts):
    from types import SimpleNamespace

    from mmalign.preference.step import reward_accuracy

    processor, _ = batch_parts
    pairs = [
        PreferencePair(f"q{i}", [{"role": "user", "content": "Is there a star?"}], "Yes.", "No.")
        for i in range(3)
    ]
    calls = []

    def model(batch):  # chosen wins for pairs q0 and q2
        calls.append(batch.num_pairs)
        return torch.tensor([[1.0, 0.0]] * batch.num_pairs)

    def strategy(rank, world, others=0.0):
        return SimpleNamespace(
            rank=rank, world_size=world, device=torch.device("cpu"), dtype=torch.float32,
            all_reduce_sum=lambda v: v + others,
        )  # fmt: skip

    encode = lambda p: encode_pair(processor, p)  # noqa: E731
    assert reward_accuracy(strategy(0, 1), model, encode, pairs, processor.pad_token_id, 2) == 1.0
    calls.clear()
    # rank 1 of 2 holds one pair (q1) but runs as many forwards as rank 0 (two at micro-batch 1)
    acc = reward_accuracy(strategy(1, 2, others=2.0), model, encode, pairs, processor.pad_token_id, 1)
    assert len(calls) == 2 and acc == pytest.approx(1.0)
