"""The efficient DPO step equals a plain two-sequence implementation (every mode, to 1e-5).

The plain implementation here is independent of :mod:`mmalign.preference.scoring`: each
``[prompt | response]`` is its own row through ``LMM.forward`` (full logits), log-probs summed
over the response's target tokens by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from mmalign.data.formats import Example
from mmalign.data.processor import MultimodalProcessor
from mmalign.losses.dpo import dpo_loss, povid_loss
from mmalign.models.lmm import IGNORE_INDEX
from mmalign.preference.batch import collate_plain, collate_shared, encode_pair
from mmalign.preference.formats import PreferencePair
from mmalign.preference.ref_cache import ReferenceCache, pair_key, precompute
from mmalign.preference.scoring import PreferenceModel
from mmalign.training.parts import LoraConfig, apply_lora

TOL = 1e-5


@pytest.fixture()
def pairs(tmp_path):
    out = []
    texts = [
        ("Is there a star in the image?", "Yes.", "No. There is a square and a circle."),
        ("What colour is the circle?", "Red. The circle is red.", "Blue."),
        ("How many objects are there?", "There are 3 objects.", "2."),
    ]
    for i, (q, c, r) in enumerate(texts):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 40), (30 * i, 200 - 40 * i, 90)).save(path)
        prompt = [{"role": "user", "content": "<image>\n" + q}]
        out.append(PreferencePair(f"p{i}", prompt, c, r, images=[path]))
    return out


def perturb(module: torch.nn.Module, scale: float = 0.02, only: str | None = None) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if only is None or only in name:
                p.add_(scale * torch.randn(p.shape, generator=g))


def plain_logps(model, processor, pairs, extra=None):
    """(P, K) summed log-probs, one LMM.forward row per (prompt, response)."""
    rows = []
    for p in pairs:
        answers = [p.chosen, p.rejected, *((extra or {}).get(p.id, []))]
        sums = []
        for a in answers:
            msgs = [*p.prompt, {"role": "assistant", "content": a}]
            ids, labels = processor.tokenize_conversation(msgs, 1, 0, p.id)
            images, _ = processor.load_media(p)
            logits = model(torch.tensor([ids]), images=images)["logits"][0].float()
            logp = logits[:-1].log_softmax(-1)
            tgt = torch.tensor(labels[1:])
            keep = tgt != IGNORE_INDEX
            sums.append(logp[keep].gather(-1, tgt[keep].unsqueeze(-1)).sum())
        rows.append(torch.stack(sums))
    return torch.stack(rows)


def encode_all(processor, pairs, extra=None):
    return [encode_pair(processor, p, extra_rejected=(extra or {}).get(p.id)) for p in pairs]


@pytest.mark.parametrize(
    "layout, logits_only", [("shared", True), ("shared_packed", True), ("shared", False), ("plain", False)]
)
def test_frozen_reference_modes_match_plain(tiny_model, tokenizer, pairs, layout, logits_only):
    reference = copy.deepcopy(tiny_model)
    policy = tiny_model
    perturb(policy.llm)
    processor = MultimodalProcessor.for_model(policy, tokenizer)
    with torch.no_grad():
        want_pol = plain_logps(policy, processor, pairs)
        want_ref = plain_logps(reference, processor, pairs)
    want = dpo_loss(want_pol[:, 0], want_pol[:, 1], want_ref[:, 0], want_ref[:, 1], beta=0.1).loss

    enc = encode_all(processor, pairs)
    pad = processor.pad_token_id
    batch = {
        "shared": lambda: collate_shared(enc, pad),
        "shared_packed": lambda: collate_shared(enc, pad, pairs_per_row=2),
        "plain": lambda: collate_plain(enc, pad),
    }[layout]()
    for media_frozen in (True, False):
        pm = PreferenceModel(
            policy, "frozen", reference, media_frozen=media_frozen, response_logits_only=logits_only
        )
        with torch.no_grad():
            out = pm(batch)
        torch.testing.assert_close(out["policy"], want_pol, atol=TOL, rtol=1e-6)
        torch.testing.assert_close(out["reference"], want_ref, atol=TOL, rtol=1e-6)
        got = dpo_loss(
            out["policy"][:, 0], out["policy"][:, 1], out["reference"][:, 0], out["reference"][:, 1]
        )
        assert abs(float(got.loss) - float(want)) < TOL
    assert batch.lengths().tolist() == [sum(m) for p in enc for m in p.scored]


def test_lora_reference_matches_plain_and_gradients_match(tiny_model, tokenizer, pairs):
    base = copy.deepcopy(tiny_model)
    apply_lora(tiny_model, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    perturb(tiny_model.llm, 0.05, only="lora_B")
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    want_pol = plain_logps(tiny_model, processor, pairs)
    with torch.no_grad():
        want_ref = plain_logps(base, processor, pairs)
    want = dpo_loss(want_pol[:, 0], want_pol[:, 1], want_ref[:, 0], want_ref[:, 1], beta=0.1).loss
    params = [p for n, p in tiny_model.named_parameters() if "lora_" in n]
    want_grads = torch.autograd.grad(want, params)

    batch = collate_shared(encode_all(processor, pairs), processor.pad_token_id)
    out = PreferenceModel(tiny_model, "lora")(batch)
    torch.testing.assert_close(out["reference"], want_ref, atol=TOL, rtol=1e-6)
    got = dpo_loss(
        out["policy"][:, 0], out["policy"][:, 1], out["reference"][:, 0], out["reference"][:, 1]
    ).loss
    assert abs(float(got) - float(want)) < TOL
    for a, b in zip(torch.autograd.grad(got, params), want_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_precomputed_reference_matches_plain(tiny_model, tokenizer, pairs, tmp_path):
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    enc = encode_all(processor, pairs)
    keys = [pair_key(e, p, "model-x", "fp32") for e, p in zip(enc, pairs, strict=True)]
    cache = ReferenceCache(tmp_path / "cache")
    scorer = PreferenceModel(tiny_model, "none").eval()

    def score(idx):
        with torch.no_grad():
            return scorer(collate_shared([enc[i] for i in idx], processor.pad_token_id))["policy"]

    assert precompute(cache, keys, score, batch_size=2, rank=0, world_size=1, shard="rank0") == 3
    assert precompute(cache, keys, score, batch_size=2, rank=0, world_size=1, shard="rank0") == 0
    with torch.no_grad():
        want_ref = plain_logps(tiny_model, processor, pairs)
    reloaded = ReferenceCache(tmp_path / "cache")
    torch.testing.assert_close(reloaded.get(keys), want_ref, atol=TOL, rtol=1e-6)

    perturb(tiny_model.llm)
    with torch.no_grad():
        want_pol = plain_logps(tiny_model, processor, pairs)
        out = scorer(collate_shared(enc, processor.pad_token_id))
    ref = reloaded.get(keys)
    want = dpo_loss(want_pol[:, 0], want_pol[:, 1], want_ref[:, 0], want_ref[:, 1], 0.1, "ipo").loss
    got = dpo_loss(out["policy"][:, 0], out["policy"][:, 1], ref[:, 0], ref[:, 1], 0.1, "ipo").loss
    assert abs(float(got) - float(want)) < 1e-4 * max(1.0, abs(float(want)))


def test_media_bytes_change_the_cache_key(tiny_model, tokenizer, pairs):
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    enc = encode_pair(processor, pairs[0])
    before = pair_key(enc, pairs[0], "m", "fp32")
    assert pair_key(enc, pairs[0], "m", "bf16") != before
    Image.new("RGB", (40, 40), (1, 2, 3)).save(pairs[0].images[0])
    assert pair_key(enc, pairs[0], "m", "fp32") != before


def test_povid_three_responses_in_one_row(tiny_model, tokenizer, pairs):
    reference = copy.deepcopy(tiny_model)
    perturb(tiny_model.llm)
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    extra = {p.id: ["There is a red heart."] for p in pairs}
    with torch.no_grad():
        want_pol = plain_logps(tiny_model, processor, pairs, extra)
        want_ref = plain_logps(reference, processor, pairs, extra)
        batch = collate_shared(encode_all(processor, pairs, extra), processor.pad_token_id)
        out = PreferenceModel(tiny_model, "frozen", reference)(batch)
    assert out["policy"].shape == (3, 3)
    want, _, _ = povid_loss(*want_pol.unbind(1), *want_ref.unbind(1), beta=0.1)
    got, _, _ = povid_loss(*out["policy"].unbind(1), *out["reference"].unbind(1), beta=0.1)
    torch.testing.assert_close(got, want, atol=TOL, rtol=1e-6)


def test_shared_row_mask_and_positions(tiny_model, tokenizer, pairs):
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    enc = encode_pair(processor, pairs[0])
    batch = collate_shared([enc], processor.pad_token_id)
    n, c, r = len(enc.prompt_ids), len(enc.responses[0]), len(enc.responses[1])
    mask = batch.attention_mask[0, 0]
    assert batch.position_ids[0, n + c].item() == n  # rejected restarts after the prompt
    assert batch.position_ids[0, n].item() == n
    assert not mask[n + c : n + c + r, n : n + c].any()  # rejected never sees chosen
    assert mask[n + c : n + c + r, :n].all()  # but sees the whole prompt
    assert mask[n + c + r - 1, n + c : n + c + r].all()
    assert not mask[:n, n:].any()  # causal
    # one image per pair in the shared row, K copies in the plain layout
    assert batch.images.shape[0] == 1
    assert collate_plain([enc], processor.pad_token_id).images.shape[0] == 2


def test_povid_argmax_noise_answer_is_teacher_forced_argmax(tiny_model, tokenizer, pairs):
    from mmalign.preference.povid import distort_pixels, noise_answers

    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    enc = encode_all(processor, pairs)
    texts = noise_answers(
        tiny_model, processor, enc, "argmax", t=500, generator=torch.Generator().manual_seed(3)
    )
    gen = torch.Generator().manual_seed(3)
    for p, e, text in zip(pairs, enc, texts, strict=True):
        noisy = distort_pixels(e.images, processor, 500, gen)
        assert not torch.allclose(noisy, e.images, atol=0.1)
        ids, labels = processor.tokenize_conversation(
            [*p.prompt, {"role": "assistant", "content": p.chosen}], 1, 0, p.id
        )
        with torch.no_grad():
            logits = tiny_model(torch.tensor([ids]), images=noisy)["logits"][0]
        keep = [i for i in range(1, len(ids)) if labels[i] != IGNORE_INDEX]
        want = tokenizer.decode([int(logits[i - 1].argmax()) for i in keep], skip_special_tokens=True).strip()
        assert text == (want or ".")
    generated = noise_answers(tiny_model, processor, enc, "generate", max_new_tokens=4)
    assert len(generated) == 3 and all(isinstance(g, str) and g for g in generated)


# ----------------------------------------------------------------------------- groups of K responses
ANSWERS = ["Yes.", "No. There is a square.", "A red circle and a blue star.", "3."]


def plain_token_logps(model, feat_ids, images, response, scored):
    """Per-token log-probs of ``response`` after ``feat_ids`` from one plain forward, at scored tokens."""
    ids = torch.tensor([list(feat_ids) + list(response)])
    logits = model(ids, images=images)["logits"][0].float()
    n = len(feat_ids)
    logp = logits[n - 1 : n - 1 + len(response)].log_softmax(-1)
    picked = logp.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)
    return picked[torch.tensor(scored, dtype=torch.bool)]


@pytest.mark.parametrize("k", [3, 4])
def test_group_of_k_responses_equals_k_plain_sequences(tiny_model, tokenizer, pairs, k):
    from mmalign.preference.batch import encode_group, group_from_ids

    reference = copy.deepcopy(tiny_model)
    perturb(tiny_model.llm)
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    groups = [
        encode_group(processor, p.id, p.prompt, ANSWERS[:k], p.images, where=f"f.jsonl:{i}")
        for i, p in enumerate(pairs)
    ]
    # the same responses as token ids (scored as given; here the text route's tokens, all scored)
    from_ids = [group_from_ids(g.id, g.prompt_ids, g.responses, g.images) for g in groups]
    for enc, rows in ((groups, 1), (groups, 2), (from_ids, 2)):
        batch = collate_shared(enc, processor.pad_token_id, pairs_per_row=rows)
        assert batch.images.shape[0] == len(pairs)  # each group's image once
        with torch.no_grad():
            out = PreferenceModel(tiny_model, "frozen", reference)(batch)
            for name, model, tokens in (
                ("policy", tiny_model, out["token_logps"]),
                ("reference", reference, out["reference_token_logps"]),
            ):
                pieces = batch.split_by_sequence(tokens)
                for g, pieces_g in zip(enc, pieces, strict=True):
                    assert len(pieces_g) == k
                    for resp, mask, got in zip(g.responses, g.scored, pieces_g, strict=True):
                        want = plain_token_logps(model, g.prompt_ids, g.images, resp, mask)
                        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
                sums = torch.stack([torch.stack([p.sum() for p in row]) for row in pieces])
                torch.testing.assert_close(out[name], sums, atol=TOL, rtol=1e-6)
    # K = 2 from text is exactly encode_pair's group
    pair = encode_pair(processor, pairs[0])
    two = encode_group(
        processor, pairs[0].id, pairs[0].prompt, [pairs[0].chosen, pairs[0].rejected], pairs[0].images
    )
    assert (two.prompt_ids, two.responses, two.scored) == (pair.prompt_ids, pair.responses, pair.scored)


def test_sampled_responses_score_as_they_were_sampled(tiny_model, tokenizer, pairs):
    from mmalign.preference.batch import group_from_ids
    from mmalign.preference.scoring import group_logps
    from mmalign.training.generation import GenerationConfig, generate

    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    feats = [processor.encode_prompt(Example(p.id, p.prompt, p.images)) for p in pairs]
    cfg = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=2.0)
    gen = generate(
        tiny_model,
        processor,
        feats,
        cfg,
        num_samples=3,
        return_logprobs=True,
        generator=torch.Generator().manual_seed(1),
    )
    groups = [
        group_from_ids(f["id"], gen.prompt_ids[i], gen.ids[3 * i : 3 * i + 3], f["images"])
        for i, f in enumerate(feats)
    ]
    batch = collate_shared(groups, processor.pad_token_id)
    with torch.no_grad():
        tokens, sums = group_logps(tiny_model, batch)
    assert sums.shape == (3, 3)
    got = [t for row in batch.split_by_sequence(tokens) for t in row]
    for a, b in zip(got, gen.logprobs, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)  # ratio 1 at the first update


def test_reference_cache_keeps_per_token_logps(tiny_model, tokenizer, pairs, tmp_path):
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    enc = encode_all(processor, pairs)
    keys = [pair_key(e, p, "model-x", "fp32") for e, p in zip(enc, pairs, strict=True)]
    cache = ReferenceCache(tmp_path / "cache")
    scorer = PreferenceModel(tiny_model, "none").eval()

    def score(idx):
        batch = collate_shared([enc[i] for i in idx], processor.pad_token_id)
        with torch.no_grad():
            out = scorer(batch)
        return out["policy"], batch.split_by_sequence(out["token_logps"])

    assert precompute(cache, keys, score, batch_size=2, rank=0, world_size=1, shard="rank0") == 3
    reloaded = ReferenceCache(tmp_path / "cache")
    with torch.no_grad():
        want = plain_logps(tiny_model, processor, pairs)
    torch.testing.assert_close(reloaded.get(keys), want, atol=TOL, rtol=1e-6)
    for e, row in zip(enc, reloaded.get_tokens(keys), strict=True):
        for resp, mask, got in zip(e.responses, e.scored, row, strict=True):
            with torch.no_grad():
                ref = plain_token_logps(tiny_model, e.prompt_ids, e.images, resp, mask)
            torch.testing.assert_close(got, ref, atol=TOL, rtol=0)
    sums_only = ReferenceCache(tmp_path / "sums")
    sums_only.append("r0", [(keys[0], [0.0, 1.0])])
    with pytest.raises(KeyError, match="per-token"):
        ReferenceCache(tmp_path / "sums").get_tokens(keys[:1])
