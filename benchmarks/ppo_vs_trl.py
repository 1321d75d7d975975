"""One PPO iteration (rollout + update): TRL's PPOTrainer vs mmalign on the same Llama, in one run.

Launch:

    pip install -e '.[bench]'
    OMP_NUM_THREADS=2 python benchmarks/ppo_vs_trl.py               # CPU size (a few minutes)
    python benchmarks/ppo_vs_trl.py --gpu                            # 1.03 B TinyLlama shape
    python benchmarks/ppo_vs_trl.py --gpu --shape-only               # print the sizes, run nothing

**Which TRL.** ``PPOTrainer`` left TRL in 1.13 (1.12.0 is the last release that has it, as
``trl.experimental.ppo``). When the installed TRL has none, the TRL worker runs TRL 1.12.0 from
``--trl-ppo DIR`` (default ``~/.cache/mmalign-bench/trl-1.12.0``), installed there on first use
with ``pip install --no-deps --target DIR trl==1.12.0`` (its other requirements are ours). The
installed TRL is untouched; only the TRL subprocess puts DIR first on ``sys.path``.

**One model, both sides.** A tokenizer (byte-level BPE trained on random letter words, so every
id of the model's vocabulary decodes to text and re-encodes to about as many tokens: mmalign's
reward model reads the response *as text*, TRL's reads the ids), a random-init seeded
``LlamaForCausalLM`` (policy + reference) and a ``LlamaForSequenceClassification`` with the same
trunk and a seeded score row (reward model + value model trunk, as TRL's examples use the reward
model for the value model) are saved to a temporary folder; TRL loads them with
``from_pretrained``. The same Llama is put into a ``LlavaForConditionalGeneration`` (a small CLIP
tower + projector around it) that mmalign imports with
:func:`mmalign.models.llava_hf.import_llava_hf`; mmalign's reward and value models are that LMM
with the score row as their :class:`~mmalign.models.heads.ScalarHead`. So all weights match.

**The same work.** Same prompts (the chat template rendered to the same ids on both sides —
checked), rollout batch B, one sample per prompt, PPO epochs E, one minibatch per epoch of
micro-batches of m prompts (TRL: ``per_device_train_batch_size=m``,
``gradient_accumulation_steps=B/m``, ``num_mini_batches=1``; mmalign: ``micro_batch_size=m``,
``grad_accum=B/m`` → one optimizer step per epoch on both), temperature 1, no top-k/top-p, AdamW
at the same constant lr, no weight decay, no gradient clipping (TRL's PPO has none), fp32, no
gradient checkpointing, no reward prompt, the same KL coefficient, clip ranges and vf_coef.
**Exactly N response tokens on both:** TRL with ``stop_token=None`` / ``stop_token_id=None``
(its generation config has no EOS, so ``generate`` runs ``response_length`` steps); mmalign with
the processor's stop ids emptied (``GenerationConfig.stop_token_ids=()``, no stop token). The
lengths actually generated are printed. Single process: mmalign's engines are ZeRO-0 DeepSpeed
engines in a world of one (:class:`~mmalign.training.strategy.Strategy`, no launcher), built as
``train/ppo.py`` builds them (policy engine over a ``PreferenceModel`` with a frozen reference,
value engine over ``ScalarModel(read="tokens")``, reward model through ``prepare_frozen``); the
blank-media rule (a ZeRO-3 multi-rank need) is not applied, so text-only batches skip the
vision tower as they would on one rank without ZeRO-3.

**Measured.** Each system runs in its own subprocess: a warm-up iteration, then ``--timed``
iterations (default 1; the fastest is kept). samples/s = B / (wall time of the iteration: rollout
+ update); the process's CPU seconds in it (``time.process_time``: on a shared machine less
sensitive to other load than wall time); the rollout's share of the wall time and its parts:
sampling, scoring (TRL: reference + value forwards, its old log-probs come from the sampler's
logits; mmalign: policy + reference + value forwards), reward model (the rest of the rollout:
rewards, GAE, whitening, bookkeeping — on both sides the rollout ends where the first training
forward starts); the update is the PPO epochs. Peak memory as ``benchmarks/dpo_vs_trl.py`` measures it (CUDA:
``max_memory_allocated``; CPU: ``ru_maxrss`` minus the resident set after imports). A third
subprocess runs mmalign's multimodal iteration: the same prompts with one image each (no peer
runs it). ``--repeats R`` runs the subprocesses R times, interleaved, and keeps each system's
fastest (for a machine shared with other work).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.dpo_vs_trl import CHAT_TEMPLATE, llava_config, memory_report, rss_kib  # noqa: E402

TRL_PPO_VERSION = "1.12.0"  # the last TRL release with PPOTrainer
DEFAULT_TRL_DIR = Path.home() / ".cache" / "mmalign-bench" / f"trl-{TRL_PPO_VERSION}"

SIZES = {
    # CPU: minutes on 2 cores; vocabulary 8192 so the LM head is not the whole model.
    "cpu": dict(
        image=112, patch=14, v_hidden=128, v_layers=2, v_heads=4, v_inter=512,
        hidden=256, layers=4, heads=8, kv_heads=2, inter=688, vocab=8192, corpus=20000,
        prompt_words=10, response=32, batch=8, micro=4, epochs=2, dtype="float32",
    ),
    # GPU: CLIP-L/14-336 + TinyLlama-1.1B shape; fp32 on both sides (TRL's PPO keeps no fp32
    # master weights when the model is loaded in bf16, mmalign's bf16 does: fp32 is the same work).
    "gpu": dict(
        image=336, patch=14, v_hidden=1024, v_layers=24, v_heads=16, v_inter=4096,
        hidden=2048, layers=22, heads=32, kv_heads=4, inter=5632, vocab=32000, corpus=120000,
        prompt_words=40, response=128, batch=32, micro=8, epochs=2, dtype="float32",
    ),
}  # fmt: skip
PPO = dict(kl_coef=0.05, clip=0.2, value_clip=0.2, vf_coef=0.1, gamma=1.0, lam=0.95)


# ----------------------------------------------------------------------------- model and data
def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))


def build_folder(s: dict, folder: Path, seed: int = 0) -> None:
    """``tok/``, ``llm/`` (LlamaForCausalLM), ``rm/`` (LlamaForSequenceClassification, same trunk),
    ``llava/`` (the same Llama inside a LlavaForConditionalGeneration + processor)."""
    from transformers import (
        CLIPImageProcessor,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from mmalign.data.tokenizer import train_bpe_tokenizer

    rng = random.Random(seed)
    corpus = [" ".join(_word(rng) for _ in range(40)) for _ in range(s["corpus"])]
    tok = train_bpe_tokenizer(corpus, vocab_size=s["vocab"])
    tok.chat_template = CHAT_TEMPLATE
    s = {**s, "vocab": len(tok)}
    config = llava_config(s, len(tok), tok.convert_tokens_to_ids("<image>"), tok.pad_token_id)
    text = config.text_config
    text.bos_token_id, text.eos_token_id = tok.bos_token_id, tok.eos_token_id
    dtype = getattr(torch, s["dtype"])
    torch.manual_seed(seed)
    llm = LlamaForCausalLM(text).to(dtype)
    llm.generation_config.eos_token_id = tok.eos_token_id
    llm.save_pretrained(folder / "llm")
    tok.save_pretrained(folder / "llm")
    rm_config = type(text).from_dict({**text.to_dict(), "num_labels": 1})
    rm = LlamaForSequenceClassification(rm_config).to(dtype)
    rm.model.load_state_dict(llm.model.state_dict())
    torch.manual_seed(seed + 1)
    torch.nn.init.normal_(rm.score.weight, std=0.02)
    rm.save_pretrained(folder / "rm")
    tok.save_pretrained(folder / "rm")
    torch.manual_seed(seed)
    llava = LlavaForConditionalGeneration(config).to(dtype)
    llava.model.language_model.load_state_dict(llm.model.state_dict())
    llava.lm_head.load_state_dict(llm.lm_head.state_dict())
    llava.save_pretrained(folder / "llava")
    ip = CLIPImageProcessor(
        size={"shortest_edge": s["image"]}, crop_size={"height": s["image"], "width": s["image"]},
        do_convert_rgb=True,
    )  # fmt: skip
    proc = LlavaProcessor(
        image_processor=ip, tokenizer=tok, patch_size=s["patch"], vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    )  # fmt: skip
    proc.save_pretrained(folder / "llava")
    tok.save_pretrained(folder / "llava")

    # Prompts: (1 + timed)·B (a warm-up iteration + the timed ones), rendered once to ids.
    prompts = []
    for i in range((1 + s["timed"]) * s["batch"]):
        text_prompt = " ".join(_word(rng) for _ in range(s["prompt_words"])) + "?"
        messages = [{"role": "user", "content": text_prompt}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        g = torch.Generator().manual_seed(seed * 1000 + i)
        arr = (torch.rand(s["image"], s["image"], 3, generator=g) * 255).to(torch.uint8).numpy()
        from PIL import Image

        Image.fromarray(arr).save(folder / f"img_{i}.png")
        prompts.append({"id": f"p{i}", "text": text_prompt, "ids": list(ids), "image": f"img_{i}.png"})
    (folder / "prompts.json").write_text(json.dumps(prompts))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def current_gib(base_kib: int) -> float:
    """Memory held now, measured as the peak is (CUDA allocated; CPU resident set minus base)."""
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**30
    return (rss_kib() - base_kib) / 2**20


class Timers:
    """Seconds spent per phase (synchronised on CUDA)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def wrap(self, name: str, fn):  # noqa: ANN001, ANN201
        def timed(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            _sync()
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            _sync()
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t0
            return out

        return timed


# ----------------------------------------------------------------------------- TRL worker
def run_trl(s: dict, folder: Path, lr: float) -> dict:
    import datasets
    import trl
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )

    try:
        from trl import PPOConfig, PPOTrainer
    except ImportError:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as mod

    base = rss_kib()
    prompts = json.loads((folder / "prompts.json").read_text())
    b = s["batch"]
    dtype = getattr(torch, s["dtype"])
    tok = AutoTokenizer.from_pretrained(folder / "llm", padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(folder / "llm", dtype=dtype)
    ref = AutoModelForCausalLM.from_pretrained(folder / "llm", dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(folder / "rm", dtype=dtype, num_labels=1)
    reward = AutoModelForSequenceClassification.from_pretrained(folder / "rm", dtype=dtype, num_labels=1)
    ds = datasets.Dataset.from_list([{"input_ids": p["ids"]} for p in prompts])

    timers, marks, gen_lengths = Timers(), [], []
    per_iter: list[dict[str, float]] = []

    def generation(model, queries, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = batch_generation(model, queries, *a, **kw)
        gen_lengths.append(out[0].shape[1] - queries.shape[1])
        return out

    batch_generation = mod.batch_generation
    mod.batch_generation = timers.wrap("sample", generation)
    plain_forward, plain_reward = mod.forward, mod.get_reward
    timed_score = timers.wrap("score", plain_forward)
    timed_update_fwd = timers.wrap("update_forward", plain_forward)
    mod.forward = lambda *a, **kw: (timed_score if not torch.is_grad_enabled() else timed_update_fwd)(
        *a, **kw
    )
    reward_id = id(reward)
    timed_value, timed_rm = timers.wrap("score", plain_reward), timers.wrap("reward", plain_reward)
    mod.get_reward = lambda m, *a, **kw: (
        timed_rm if id(m) == reward_id or id(getattr(m, "module", None)) == reward_id else timed_value
    )(m, *a, **kw)
    first_update = {}
    update_fwd_inner = mod.forward

    def mark_update(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        if torch.is_grad_enabled() and "t" not in first_update:
            _sync()
            first_update["t"] = time.perf_counter()
        return update_fwd_inner(*a, **kw)

    mod.forward = mark_update

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003, ANN202
            _sync()
            now = time.perf_counter()
            start = marks[-1] if marks else (now, time.process_time())
            marks.append((now, time.process_time()))
            per_iter.append(
                {**timers.t, "start": start[0], "cpu_start": start[1], "update_start": first_update.pop("t", now),
                 "end": now, "cpu_end": marks[-1][1], "response_tokens": gen_lengths[-1]}
            )  # fmt: skip
            timers.t.clear()

    args = PPOConfig(
        output_dir=str(folder / "trl_out"), per_device_train_batch_size=s["micro"],
        gradient_accumulation_steps=b // s["micro"], num_mini_batches=1, num_ppo_epochs=s["epochs"],
        total_episodes=(1 + s["timed"]) * b, local_rollout_forward_batch_size=b, response_length=s["response"],
        stop_token=None, stop_token_id=None, temperature=1.0, missing_eos_penalty=None,
        kl_coef=PPO["kl_coef"], cliprange=PPO["clip"], cliprange_value=PPO["value_clip"],
        vf_coef=PPO["vf_coef"], gamma=PPO["gamma"], lam=PPO["lam"], whiten_rewards=False,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch", bf16=False, fp16=False, gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(), num_sample_generations=0, logging_steps=1,
        report_to=[], save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0,
        sft_model_path=str(folder / "llm"), reward_model_path=str(folder / "rm"),
    )  # fmt: skip
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
        value_model=value, train_dataset=ds, eval_dataset=ds.select(range(2)), callbacks=[Timer()],
    )  # fmt: skip
    setup_gib = current_gib(base)
    trainer.train()
    return _summary(s, per_iter[1:], memory_report(base), setup_gib, f"TRL PPOTrainer {trl.__version__}")


def _summary(s: dict, timed: list[dict], peak: float, setup: float, name: str) -> dict:
    """The fastest of the timed iterations (after the warm-up), its phases and CPU seconds."""
    it = min(timed, key=lambda t: t["end"] - t["start"])
    total = it["end"] - it["start"]
    rollout = it["update_start"] - it["start"]
    return {
        "name": name,
        "samples_per_s": s["batch"] / total,
        "iteration_s": total,
        "all_iteration_s": [t["end"] - t["start"] for t in timed],
        "cpu_s": it["cpu_end"] - it["cpu_start"],
        "rollout_s": rollout,
        "sample_s": it.get("sample", 0.0),
        "score_s": it.get("score", 0.0),
        "reward_s": it.get("reward", 0.0),
        "update_s": total - rollout,
        "peak_gib": peak,
        "setup_gib": setup,
        "response_tokens": it["response_tokens"],
        "scored_tokens": it.get("scored_tokens"),
        "policy_loss": it.get("policy_loss"),
    }


# ----------------------------------------------------------------------------- mmalign worker
def run_mmalign(s: dict, folder: Path, lr: float, images: bool) -> dict:
    from safetensors.torch import load_file

    from mmalign.data.processor import MultimodalProcessor
    from mmalign.models.heads import ScalarHead, ScalarModel
    from mmalign.models.llava_hf import import_llava_hf
    from mmalign.preference.reward_model import RewardModel
    from mmalign.preference.scoring import PreferenceModel
    from mmalign.rl import rollout as rollout_mod
    from mmalign.rl.actor_critic import PPOEngines
    from mmalign.rl.config import PPOConfig
    from mmalign.rl.ppo import ppo_update
    from mmalign.rl.prompts import RLPrompt
    from mmalign.rl.reward_sources import RewardSources
    from mmalign.training.parts import OptimConfig, configure_parts
    from mmalign.training.strategy import Strategy, StrategyConfig

    precision = {"float32": "fp32", "bfloat16": "bf16"}[s["dtype"]]
    b, m = s["batch"], s["micro"]
    strategy_cfg = StrategyConfig(
        zero_stage=0, precision=precision, micro_batch_size=m, grad_accum=b // m, grad_clip=0.0
    )
    cfg = PPOConfig(
        strategy=strategy_cfg, optim=OptimConfig(lr=lr, weight_decay=0.0, schedule="constant"),
        rollout_batch_size=b, num_samples=1, ppo_epochs=s["epochs"], max_new_tokens=s["response"],
        temperature=1.0, top_p=1.0, top_k=0, generation_batch_size=b, reward_prompt=None,
        kl_coef=PPO["kl_coef"], clip_range=PPO["clip"], value_clip_range=PPO["value_clip"],
        vf_coef=PPO["vf_coef"], gamma=PPO["gamma"], lam=PPO["lam"], whiten_rewards=False, plot=False,
    )  # fmt: skip
    strategy = Strategy(strategy_cfg, seed=0)
    strategy.setup_distributed()
    base = rss_kib()
    dtype, dev = strategy.dtype, strategy.device
    llava = folder / "llava"
    policy, tok = import_llava_hf(llava, dtype=dtype)
    ref = import_llava_hf(llava, dtype=dtype)[0]
    processor = MultimodalProcessor.for_model(policy, tok)
    processor.stop_token_ids = []  # no stop token: exactly max_new_tokens (as TRL without stop_token)
    score = load_file(str(folder / "rm" / "model.safetensors"))["score.weight"]
    policy_groups = configure_parts(policy, cfg.parts, cfg.optim)
    media_frozen = not (cfg.parts.train_vision or cfg.parts.train_projector)  # as train/ppo.py
    policy_model = PreferenceModel(policy, "frozen", ref, media_frozen=media_frozen).to(dev)
    value_lmm = import_llava_hf(llava, dtype=dtype)[0]
    value_groups = configure_parts(value_lmm, cfg.parts, cfg.optim)
    value_model = ScalarModel(value_lmm, ScalarHead.from_state_dict({"weight": score}), read="tokens").to(dev)
    value_groups.append({"params": list(value_model.head.parameters()), "lr": lr, "weight_decay": 0.0})
    reward_model = RewardModel(
        import_llava_hf(llava, dtype=dtype)[0], ScalarHead.from_state_dict({"weight": score})
    )
    betas, eps = cfg.optim.betas, cfg.optim.eps
    policy_engine = strategy.prepare(
        policy_model, strategy.make_optimizer(policy_groups, betas, eps), None, name="policy"
    )
    value_engine = strategy.prepare(
        value_model, strategy.make_optimizer(value_groups, betas, eps), None, name="value"
    )
    rm = strategy.prepare_frozen(reward_model, name="reward")
    setup_gib = current_gib(base)

    # Timers: sampling, scoring (policy + reference + value forwards), reward model.
    timers = Timers()
    rollout_mod.generate = timers.wrap("sample", rollout_mod.generate)
    rollout_mod.score_groups = timers.wrap("score", rollout_mod.score_groups)
    rm_timed = timers.wrap("reward", rm)

    prompts_json = json.loads((folder / "prompts.json").read_text())
    prompts, same_ids = [], True
    for p in prompts_json:
        content = ("<image>\n" if images else "") + p["text"]
        prompts.append(
            RLPrompt(
                p["id"], [{"role": "user", "content": content}], [folder / p["image"]] if images else [], [],
                None, None, "open",
            )
        )  # fmt: skip
        if not images:
            same_ids &= processor.tokenize_prompt(prompts[-1].prompt, 0, 0, p["id"]) == p["ids"]
    engines = PPOEngines(strategy, policy_engine, value_engine)
    sources = RewardSources(reward_model=rm_timed, rm_processor=processor, template=None, micro_batch=m)

    def rollout(batch: list, it: int):  # noqa: ANN202
        return rollout_mod.collect_rollout(engines, sources, processor, batch, cfg, it, cfg.kl_coef)

    per_iter = []
    for it in range(1 + s["timed"]):
        timers.t.clear()
        _sync()
        t0, c0 = time.perf_counter(), time.process_time()
        ro = rollout(prompts[it * b : (it + 1) * b], it)
        _sync()
        t1 = time.perf_counter()
        upd = ppo_update(engines, ro, cfg, it, processor.pad_token_id, cfg.kl_coef)
        _sync()
        t2 = time.perf_counter()
        per_iter.append(
            {**timers.t, "start": t0, "cpu_start": c0, "update_start": t1, "end": t2,
             "cpu_end": time.process_time(), "response_tokens": float(ro.lengths.float().mean()),
             "scored_tokens": float(ro.mask.sum()), "policy_loss": upd.get("loss/policy")}
        )  # fmt: skip
    name = "mmalign " + ("multimodal (1 image/prompt)" if images else "text-only")
    out = _summary(s, per_iter[1:], memory_report(base), setup_gib, name)
    if not images:
        out["same_prompt_ids"] = bool(same_ids)
    return out


# ----------------------------------------------------------------------------- driver
def shape_check(s: dict) -> None:
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config(s, s["vocab"], 4, 0))
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    llm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    print(
        f"LLM {llm / 1e9:.3f} B params (×4 roles: policy, reference, value, reward); vision {vision / 1e6:.1f} M"
    )
    print(f"rollout {s['batch']} prompts (~{int(1.3 * s['prompt_words']) + 5} tokens), {s['response']} response "
          f"tokens, micro-batch {s['micro']}, {s['epochs']} PPO epochs, {s['dtype']}")  # fmt: skip


def ensure_trl_ppo(target: Path) -> str | None:
    """A path to put first on the TRL worker's sys.path (None: the installed TRL has PPOTrainer)."""
    probe = "import trl.experimental.ppo as m; m.PPOTrainer"
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    if subprocess.run([sys.executable, "-c", probe], capture_output=True, env=env).returncode == 0:
        return None
    if not (target / "trl" / "experimental" / "ppo").is_dir():
        print(
            f"the installed TRL has no PPOTrainer: installing trl=={TRL_PPO_VERSION} (no deps) into {target}"
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
             f"trl=={TRL_PPO_VERSION}"],
            check=True,
        )  # fmt: skip
    return str(target)


def sizes(args: argparse.Namespace) -> dict:
    return {**SIZES["gpu" if args.gpu else "cpu"], "timed": args.timed}


def worker(args: argparse.Namespace) -> None:
    if args.trl_path and args.worker == "trl":
        sys.path.insert(0, args.trl_path)
    s = sizes(args)
    folder = Path(args.folder)
    if args.worker == "trl":
        res = run_trl(s, folder, args.lr)
    else:
        res = run_mmalign(s, folder, args.lr, images=args.worker == "mmalign_mm")
    print("RESULT " + json.dumps(res))


def spawn(name: str, args: argparse.Namespace, folder: Path, trl_path: str | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--folder", str(folder), "--lr", str(args.lr)]
    cmd += ["--timed", str(args.timed)] + (["--gpu"] if args.gpu else [])
    if trl_path and name == "trl":
        cmd += ["--trl-path", trl_path]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="device size (TinyLlama-1.1B shape + CLIP-L/336)")
    parser.add_argument("--shape-only", action="store_true", help="print the model sizes, run nothing")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument(
        "--timed", type=int, default=1, help="timed iterations after the warm-up (fastest kept)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="rounds of the subprocesses, interleaved (TRL, mmalign, multimodal, TRL, ...); fastest kept",
    )  # fmt: skip
    parser.add_argument("--trl-ppo", default=str(DEFAULT_TRL_DIR), help="where TRL 1.12.0 is (or goes)")
    parser.add_argument("--no-multimodal", action="store_true", help="skip mmalign's image iteration")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--trl-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    s = sizes(args)
    if args.shape_only:
        return shape_check(s)
    os.environ["HF_HUB_OFFLINE"] = "1"
    trl_path = ensure_trl_ppo(Path(args.trl_ppo))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    t_start = time.perf_counter()
    names = ["trl", "mmalign"] + ([] if args.no_multimodal else ["mmalign_mm"])
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_folder(s, folder)
        prompt_ids = [len(p["ids"]) for p in json.loads((folder / "prompts.json").read_text())]
        for _ in range(args.repeats):
            for n in names:
                runs[n].append(spawn(n, args, folder, trl_path if n == "trl" else None))
    results = {n: max(rs, key=lambda r: r["samples_per_s"]) for n, rs in runs.items()}
    trl, mm = results["trl"], results["mmalign"]
    print(
        f"\nPPO, one iteration (rollout + update) after a warm-up, fastest of {args.timed} timed × {args.repeats} "
        f"run(s): {s['batch']} prompts ({min(prompt_ids)}–{max(prompt_ids)} tokens) × 1 sample, "
        f"{s['response']} response tokens, {s['epochs']} PPO epochs, micro-batch {s['micro']}, {s['dtype']}, {device}"
    )
    print(f"same prompt ids on both sides: {mm.get('same_prompt_ids')}; response tokens generated: "
          + ", ".join(f"{r['name']} {r['response_tokens']:g}" for r in results.values()))  # fmt: skip
    head = f"{'system':<36}{'samples/s':>10}{'× TRL':>7}{'peak GiB':>9}{'× TRL':>7}{'setup':>7}"
    print(
        head
        + f"{'CPU s':>7}{'× TRL':>7}{'rollout':>8}{'sample s':>9}{'score s':>8}{'reward s':>9}{'update s':>9}"
    )
    for r in results.values():
        print(
            f"{r['name']:<36}{r['samples_per_s']:>10.3f}{r['samples_per_s'] / trl['samples_per_s']:>7.2f}"
            f"{r['peak_gib']:>9.3f}{r['peak_gib'] / trl['peak_gib']:>7.2f}{r['setup_gib']:>7.3f}"
            f"{r['cpu_s']:>7.1f}{r['cpu_s'] / trl['cpu_s']:>7.2f}"
            f"{r['rollout_s'] / r['iteration_s']:>7.0%} {r['sample_s']:>9.2f}{r['score_s']:>8.2f}"
            f"{r['reward_s']:>9.2f}{r['update_s']:>9.2f}"
        )
    print("mmalign's scored response tokens / policy loss in the kept iteration: " + "; ".join(
        f"{r['name']} {r['scored_tokens']:g} / {r['policy_loss']:.4f}"
        for r in results.values() if r.get("scored_tokens")
    ))  # fmt: skip
    print("setup: memory once the models (and optimizers, without state) are built, before the first "
          "iteration")  # fmt: skip
    print("every timed iteration (s): " + "; ".join(
        f"{n} " + " ".join(f"{t:.1f}" for r in rs for t in r["all_iteration_s"]) for n, rs in runs.items()
    ))  # fmt: skip
    ok = mm["samples_per_s"] >= 2 * trl["samples_per_s"] and mm["peak_gib"] <= 0.7 * trl["peak_gib"]
    print(
        f"goal (≥ 2× TRL samples/s at ≤ 0.7× its memory, text-only): {'met' if ok else 'not met'} "
        f"({mm['samples_per_s'] / trl['samples_per_s']:.2f}×, {mm['peak_gib'] / trl['peak_gib']:.2f}×); "
        f"whole benchmark {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
