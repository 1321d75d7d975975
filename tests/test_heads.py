"""Scalar heads (:mod:`mmalign.models.heads`): reward reads the last token, value reads every response
position — each checked against a plain forward of ``[prompt | response]`` alone; the reward
head's saved format loads unchanged."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from mmalign.data.processor import MultimodalProcessor
from mmalign.models.checkpoint import save_lmm
from mmalign.models.heads import ScalarHead, ScalarModel
from mmalign.preference.batch import collate_shared, encode_group
from mmalign.preference.reward_model import HEAD_FILE, RewardModel, load_reward_model, save_head

TOL = 1e-5
ANSWERS = ["Yes.", "No. There is a square.", "A red circle and a blue star."]


@pytest.fixture()
def groups(tiny_model, tokenizer, tmp_path):
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    out = []
    for i, q in enumerate(["Is there a star?", "What colour is the circle?"]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 40), (60 * i, 120, 90)).save(path)
        prompt = [{"role": "user", "content": "<image>\n" + q}]
        out.append(encode_group(processor, f"g{i}", prompt, ANSWERS, [path]))
    return processor, out


def _plain_hidden(model, group, response):
    """Last hidden states ``(len(prompt) + len(response), D)`` of one plain forward."""
    ids = torch.tensor([group.prompt_ids + response])
    embeds = model.embed(ids, group.images)
    return model.llm.get_decoder()(inputs_embeds=embeds).last_hidden_state[0]


def test_head_init_and_state_dict_layout():
    zero = ScalarHead(8)
    assert zero.weight.shape == (1, 8) and float(zero(torch.randn(3, 5, 8)).abs().sum()) == 0.0
    rand = ScalarHead(8, zero_init=False)
    assert rand.weight.abs().sum() > 0 and set(rand.state_dict()) == {"weight", "bias"}
    linear = nn.Linear(8, 1)
    head = ScalarHead.from_state_dict(linear.state_dict())
    x = torch.randn(4, 8)
    torch.testing.assert_close(head(x), linear(x).squeeze(-1))
    assert head(x).dtype == torch.float32 and head(x).shape == (4,)
    with pytest.raises(ValueError, match=r"\(1, D\)"):
        ScalarHead.from_state_dict({"weight": torch.zeros(2, 8)})


@pytest.mark.parametrize("read", ["last", "tokens"])
def test_scalar_model_reads_like_separate_forwards(tiny_model, groups, read):
    processor, enc = groups
    head = ScalarHead(tiny_model.llm.config.hidden_size, zero_init=False)
    model = ScalarModel(tiny_model, head, read=read)
    batch = collate_shared(enc, processor.pad_token_id, pairs_per_row=2)
    with torch.no_grad():
        got = model(batch)
        if read == "last":
            assert got.shape == (2, 3)
            want = torch.tensor(
                [[float(head(_plain_hidden(tiny_model, g, r)[-1])) for r in g.responses] for g in enc]
            )
            torch.testing.assert_close(got, want, atol=TOL, rtol=0)
            return
        pieces = batch.split_by_sequence(got)
        for g, row in zip(enc, pieces, strict=True):
            for resp, mask, values in zip(g.responses, g.scored, row, strict=True):
                hidden = _plain_hidden(tiny_model, g, resp)
                n = len(g.prompt_ids)
                # V(s_t) is read where token t is predicted: position n - 1 + t
                want = head(hidden[n - 1 : n - 1 + len(resp)])[torch.tensor(mask)]
                torch.testing.assert_close(values, want, atol=TOL, rtol=0)
    assert got.shape == (int(batch.lengths().sum()),)


def test_zero_init_value_model_starts_at_zero_and_trains(tiny_model, groups):
    processor, enc = groups
    model = ScalarModel(tiny_model, read="tokens")
    batch = collate_shared(enc, processor.pad_token_id)
    values = model(batch)
    assert float(values.abs().sum()) == 0.0
    values.sum().backward()
    assert model.head.weight.grad.abs().sum() > 0 and model.head.bias.grad.abs().sum() > 0


def test_reward_head_file_loads_unchanged(tiny_model, tokenizer, groups, tmp_path):
    processor, enc = groups
    save_lmm(tiny_model, tokenizer, tmp_path / "rm")
    legacy = nn.Linear(tiny_model.llm.config.hidden_size, 1)  # the format written before heads.py
    save_file({k: v.contiguous() for k, v in legacy.state_dict().items()}, str(tmp_path / "rm" / HEAD_FILE))
    loaded, _ = load_reward_model(tmp_path / "rm")
    batch = collate_shared(enc, processor.pad_token_id)
    with torch.no_grad():
        want = RewardModel(tiny_model, legacy)(batch)
        torch.testing.assert_close(loaded(batch), want, atol=TOL, rtol=0)
        assert want.abs().sum() > 0
    save_head(loaded.head, tmp_path / "rm")  # a ScalarHead writes the same layout back
    again, _ = load_reward_model(tmp_path / "rm")
    torch.testing.assert_close(again.head.weight, legacy.weight.detach())
