"""Policy and value as two LoRA adapters on one base (mmalign.rl.actor_critic.SharedActorCritic)."""

from __future__ import annotations

import torch

from mmalign.data.processor import MultimodalProcessor
from mmalign.preference.batch import collate_groups, group_from_ids
from mmalign.rl.actor_critic import POLICY_ADAPTER, VALUE_ADAPTER, SharedActorCritic
from mmalign.training.parts import LoraConfig, OptimConfig, PartsConfig, apply_lora, configure_parts


def _setup(tiny_model, tokenizer):
    torch.manual_seed(0)
    apply_lora(tiny_model, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    ac = SharedActorCritic(tiny_model)
    configure_parts(tiny_model, PartsConfig(train_vision=False, train_projector=False), OptimConfig())
    processor = MultimodalProcessor.for_model(tiny_model, tokenizer)
    prompt = processor.tokenize_prompt([{"role": "user", "content": "<image>\nwhat is it?"}], 1, 0, "a")
    pixels = torch.rand(1, 3, tiny_model.cfg.image_processor.size, tiny_model.cfg.image_processor.size)
    words = tokenizer("a red circle and a square", add_special_tokens=False)["input_ids"]
    group = group_from_ids("a", prompt, [words[:3], words[3:5]], images=pixels)
    return ac, collate_groups([group], processor.pad_token_id)


def _lora(module, adapter: str, part: str) -> list[torch.nn.Parameter]:
    return [p for n, p in module.named_parameters() if f"{part}.{adapter}." in n]


def test_both_adapters_train_and_flags_stay(tiny_model, tokenizer):
    ac, batch = _setup(tiny_model, tokenizer)
    flags = {n: p.requires_grad for n, p in ac.named_parameters()}
    assert _lora(ac, VALUE_ADAPTER, "lora_B") and all(
        p.requires_grad for p in _lora(ac, VALUE_ADAPTER, "lora_A")
    )
    out = ac(batch, role="policy", with_reference=True, with_entropy=True)
    values = ac(batch, role="value")
    assert {n: p.requires_grad for n, p in ac.named_parameters()} == flags  # set_adapter's flips undone
    assert values.shape == out["token_logps"].shape == (5,)
    # LoRA B starts at 0: the policy equals the reference (the base), values start at 0 (zero head)
    torch.testing.assert_close(out["token_logps"], out["reference_token_logps"])
    assert torch.count_nonzero(values) == 0
    (-(out["token_logps"].sum()) + (values - 1.0).pow(2).sum()).backward()
    assert ac.head.weight.grad.abs().sum() > 0
    # the policy loss reaches the policy adapter's B, the value loss the value adapter's B (A gets
    # no gradient while B is 0); neither crosses over
    ac.zero_grad()
    ac(batch, role="policy", with_reference=False)["token_logps"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _lora(ac, POLICY_ADAPTER, "lora_B"))
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in _lora(ac, VALUE_ADAPTER, "lora_B"))
    ac.zero_grad()
    with torch.no_grad():
        ac.head.weight.fill_(0.1)
    ac(batch, role="value").sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _lora(ac, VALUE_ADAPTER, "lora_B"))
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in _lora(ac, POLICY_ADAPTER, "lora_B"))


def test_value_adapter_changes_values_not_the_policy(tiny_model, tokenizer):
    ac, batch = _setup(tiny_model, tokenizer)
    with torch.no_grad():
        ac.head.weight.normal_()
        before_policy = ac(batch, role="policy", with_reference=False)["token_logps"]
        before_values = ac(batch, role="value")
        for p in _lora(ac, VALUE_ADAPTER, "lora_B"):
            p.normal_(std=0.5)
        after_policy = ac(batch, role="policy", with_reference=False)["token_logps"]
        after_values = ac(batch, role="value")
    torch.testing.assert_close(before_policy, after_policy)
    assert (before_values - after_values).abs().max() > 1e-3
