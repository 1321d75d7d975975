"""The one decoding loop (:mod:`mmalign.models.decoding`) and :func:`mmalign.training.generation.generate`.

Checked against independent computations: per-token log-probs against a teacher-forced
``LMM.forward`` on ``[prompt | response]``, greedy ids against step-by-step full recomputation,
sampling filters against hand-made distributions.
"""

from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

from mmalign.data.processor import MultimodalProcessor
from mmalign.models.decoding import GenerationConfig, decode, decode_steps, pick_tokens
from mmalign.serve.engine import Prepared, stream_token_ids
from mmalign.training.generation import generate

TOL = 1e-5


def _feats(proc, prompts):
    """Prompt features: (text, n_images, n_videos), random pixels seeded by position."""
    out = []
    for i, (text, n_img, n_vid) in enumerate(prompts):
        g = torch.Generator().manual_seed(i)
        ids = proc.tokenize_prompt([{"role": "user", "content": text}], n_img, n_vid, f"p{i}")
        out.append(
            {
                "id": f"p{i}",
                "input_ids": ids,
                "images": torch.randn(n_img, 3, 32, 32, generator=g) if n_img else None,
                "videos": torch.randn(n_vid, 3, 3, 32, 32, generator=g) if n_vid else None,
            }
        )
    return out


PROMPTS = [
    ("<image>\nDescribe the image.", 1, 0),
    ("Is there a star?", 0, 0),
    ("<video>\nHow does the circle move in the video?", 0, 1),
    ("<image>\nHow many objects are there in the image?", 1, 0),
]


def _teacher_forced(model, feat, response):
    """Log-softmax of a plain forward on ``[prompt | response]`` at the response tokens ``(len,)``."""
    ids = torch.tensor([feat["input_ids"] + response])
    with torch.no_grad():
        logits = model(ids, images=feat["images"], videos=feat["videos"])["logits"][0].float()
    n = len(feat["input_ids"])
    logp = logits[n - 1 : n - 1 + len(response)].log_softmax(-1)
    return logp.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def test_sampled_logprobs_equal_teacher_forced_forward(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    feats = _feats(proc, PROMPTS)
    cfg = GenerationConfig(max_new_tokens=7, do_sample=True, temperature=1.5, top_p=0.9, top_k=50)
    gen = generate(
        tiny_model,
        proc,
        feats,
        cfg,
        num_samples=2,
        return_logprobs=True,
        batch_size=3,  # two decoding batches, left padding in both
        generator=torch.Generator().manual_seed(0),
    )
    assert len(gen.ids) == len(gen.texts) == len(gen.logprobs) == 8 and gen.num_samples == 2
    assert len({tuple(r) for r in gen.ids}) > 4  # sampled: responses differ
    for i, (ids, lps) in enumerate(zip(gen.ids, gen.logprobs, strict=True)):
        feat = feats[gen.prompt_of(i)]
        assert gen.prompt_ids[gen.prompt_of(i)] == feat["input_ids"]
        assert lps.shape == (len(ids),) and lps.dtype == torch.float32
        torch.testing.assert_close(lps, _teacher_forced(tiny_model, feat, ids), atol=TOL, rtol=0)
        assert gen.texts[i] == tokenizer.decode(ids, skip_special_tokens=True).strip()
    # the same generator seed gives the same samples
    again = generate(
        tiny_model, proc, feats, cfg, 2, batch_size=3, generator=torch.Generator().manual_seed(0)
    )
    assert again.ids == gen.ids and again.logprobs is None


def test_greedy_equals_full_recompute_and_stops_at_stop_token(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    feats = _feats(proc, PROMPTS)
    free = generate(tiny_model, proc, feats, GenerationConfig(max_new_tokens=6, stop_token_ids=()))
    for feat, ids in zip(feats, free.ids, strict=True):
        seq = list(feat["input_ids"])
        for tok in ids:  # greedy = argmax of a full forward, token by token
            with torch.no_grad():
                logits = tiny_model(torch.tensor([seq]), images=feat["images"], videos=feat["videos"])[
                    "logits"
                ]
            assert int(logits[0, -1].argmax()) == tok
            seq.append(tok)
    assert all(len(r) == 6 for r in free.ids) and not any(free.finished)
    # make the third greedy token of prompt 0 a stop token: it ends there, kept as the last id
    stop = free.ids[0][2]
    cut = generate(tiny_model, proc, feats, GenerationConfig(max_new_tokens=6, stop_token_ids=(stop,)))
    assert cut.ids[0] == free.ids[0][:3] and cut.finished[0]
    for full, short, done in zip(free.ids, cut.ids, cut.finished, strict=True):
        end = full.index(stop) + 1 if stop in full else len(full)
        assert short == full[:end] and done == (stop in full)


def test_media_placeholders_are_never_produced(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    llm = tiny_model.llm
    hidden, vocab = llm.lm_head.in_features, llm.lm_head.out_features
    head = nn.Linear(hidden, vocab, bias=True)  # the same weights plus a bias favouring placeholders
    with torch.no_grad():
        head.weight.copy_(llm.lm_head.weight)
        head.bias.zero_()
        head.bias[tiny_model.cfg.image_token_id] = 100.0
        head.bias[tiny_model.cfg.video_token_id] = 99.0
    llm.lm_head = head
    media = {tiny_model.cfg.image_token_id, tiny_model.cfg.video_token_id}
    feats = _feats(proc, PROMPTS)
    for sample in (False, True):
        cfg = GenerationConfig(max_new_tokens=5, do_sample=sample, stop_token_ids=())
        gen = generate(tiny_model, proc, feats, cfg, num_samples=2, return_logprobs=True)
        assert not media & {t for r in gen.ids for t in r}
        # the log-probs stay the model's own (the placeholders hold nearly all the mass)
        assert all(bool((lp < -90).all()) for lp in gen.logprobs)
    raw = generate(tiny_model, proc, feats, GenerationConfig(max_new_tokens=2, suppress_media_tokens=False))
    assert all(r == [tiny_model.cfg.image_token_id] * 2 for r in raw.ids)  # the test can fail


def test_media_encoded_once_per_prompt(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    feats = _feats(proc, PROMPTS)
    seen: list[int] = []
    hook = tiny_model.vision.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        generate(tiny_model, proc, feats, GenerationConfig(max_new_tokens=3), num_samples=4, batch_size=4)
    finally:
        hook.remove()
    assert seen == [2 + 3]  # one encoder call: 2 images + 1 video of 3 frames, not × 4 samples


def test_pick_tokens_filters():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]])).expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    topk = pick_tokens(logits, GenerationConfig(do_sample=True, top_k=2), g)
    topp = pick_tokens(logits, GenerationConfig(do_sample=True, top_p=0.5), g)  # keeps 0.4 + 0.3
    free = pick_tokens(logits, GenerationConfig(do_sample=True), g)
    assert set(topk.tolist()) == {0, 1} and set(topp.tolist()) == {0, 1}
    assert set(free.tolist()) == {0, 1, 2, 3}
    assert abs(float((topk == 0).float().mean()) - 4 / 7) < 0.03  # renormalised 0.4 / 0.7
    hot = pick_tokens(logits, GenerationConfig(do_sample=True, temperature=1e-3), g)
    assert set(hot.tolist()) == {0}
    assert pick_tokens(logits[:1], GenerationConfig()).tolist() == [0]


def test_decode_steps_report_active_rows_and_padding(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    feats = _feats(proc, PROMPTS[:2])
    batch = proc.collate(feats, padding_side="left")
    args = (tiny_model, batch["input_ids"], batch["attention_mask"], batch["images"], batch["videos"])
    free = decode(*args, GenerationConfig(max_new_tokens=4, stop_token_ids=()), pad_token_id=0)
    stop = int(free.tokens[0, 1])
    cfg = GenerationConfig(max_new_tokens=4, stop_token_ids=(stop,))
    steps = list(decode_steps(*args, cfg, pad_token_id=5, return_logprobs=True))
    out = decode(*args, cfg, pad_token_id=5, return_logprobs=True)
    assert out.tokens.shape[1] == len(steps) and bool(out.finished[0])
    n0 = int(out.lengths[0])
    assert n0 == 2 and out.tokens[0, n0:].eq(5).all() and out.logprobs[0, n0:].eq(0).all()
    assert not steps[-1].active[0] or len(steps) == 2
    torch.testing.assert_close(out.tokens[0, :2], free.tokens[0, :2])


def test_server_stream_equals_generate(tiny_model, tokenizer):
    proc = MultimodalProcessor.for_model(tiny_model, tokenizer)
    feat = _feats(proc, PROMPTS[:1])[0]
    gen = generate(tiny_model, proc, [feat], GenerationConfig(max_new_tokens=8, stop_token_ids=()))
    prepared = Prepared(torch.tensor([feat["input_ids"]]), feat["images"], None, 8)
    assert list(stream_token_ids(tiny_model, prepared, set())) == gen.ids[0]
    stop = gen.ids[0][3]
    assert list(stream_token_ids(tiny_model, prepared, {stop})) == gen.ids[0][: gen.ids[0].index(stop)]
    cancel_after = iter([False, False, True] + [True] * 8)
    assert len(list(stream_token_ids(tiny_model, prepared, set(), cancelled=lambda: next(cancel_after)))) == 2
    a = list(stream_token_ids(tiny_model, prepared, set(), temperature=1.0, seed=3))
    assert a == list(stream_token_ids(tiny_model, prepared, set(), temperature=1.0, seed=3))


def test_povid_noise_seed_is_the_same_in_another_process():
    from mmalign.preference.povid import noise_seed

    code = "from mmalign.preference.povid import noise_seed; print(noise_seed(3, 17, 1, 0))"
    seeds = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": h, "PATH": ""},
        ).stdout.strip()
        for h in ("1", "2")
    }
    assert seeds == {str(noise_seed(3, 17, 1, 0))}
    # a pinned value: hash() of a tuple of ints is process-stable too, so only this shows the
    # seed comes from stable_seed (blake2b) and stays the same across Python versions
    assert noise_seed(3, 17, 1, 0) == 1874944080613025614
    assert len({noise_seed(3, s, m, r) for s in range(3) for m in range(2) for r in range(2)}) == 12
    torch.Generator().manual_seed(noise_seed(3, 17, 1, 0))  # a valid torch seed
