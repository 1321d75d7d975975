"""DPO step: TRL's DPOTrainer vs mmalign on the same llava-hf model, data and β, in one run.

Launch:

    pip install -e '.[bench]'                       # trl
    OMP_NUM_THREADS=2 python benchmarks/dpo_vs_trl.py             # CPU size (minutes)
    python benchmarks/dpo_vs_trl.py --gpu                          # device size: CLIP-L/14-336 + 1.03 B TinyLlama shape, bf16
    python benchmarks/dpo_vs_trl.py --gpu --shape-only             # build the GPU configs on the meta device, print sizes

A ``LlavaForConditionalGeneration`` is built from config (random init, seeded) and saved with a
``LlavaProcessor`` to a temporary folder; every measurement then runs in its **own subprocess**
(so peak memory is per system): TRL loads the folder with ``from_pretrained``, mmalign imports it
with :func:`mmalign.models.llava_hf.import_llava_hf`. Both train with AdamW (same lr), β, the same
pairs in the same order (a seeded synthetic image + prompt + chosen/rejected answers), no
gradient checkpointing, vision tower and projector frozen (the LLM trains; a frozen projector is
what lets the reference reuse the policy's media features, optimisation B).

Printed: samples/s (training steps after warm-up), peak memory, the first-step loss of each
(same weights, so they must agree: TRL vs mmalign to 1e-4 in fp32), and an ablation of mmalign's
optimisations added one at a time:

    A  plain rows            chosen and rejected as two sequences; full logits; a frozen reference
                             model that encodes the image again (what peers do; TRL since 1.x
                             already restricts its LM head to completion tokens)
    B  + shared media        the reference reuses the policy's image features (encoder frozen)
    C  + shared prefix       one row [prompt | chosen | rejected], 4-D mask, positions restart
    D  + response logits     LM head and log-softmax only at response positions
    E  + precomputed ref     reference log-probs from one pass before training (no reference model)

Peak memory: on GPU ``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set
(``ru_maxrss``) minus its resident set after imports and before the model is loaded — i.e.
model, reference, optimizer state, activations and allocator slack, measured the same way for
both. The precompute pass of E is timed separately and reported as its own number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "there is a large small red blue green yellow circle square star triangle heart cross diamond "
    "at the top bottom left right center of image and objects in next to above below"
).split()

SIZES = {
    # CPU: small enough for minutes on 2 cores, shaped like the GPU one (576 → 64 image tokens).
    "cpu": dict(
        image=112, patch=14, v_hidden=128, v_layers=2, v_heads=4, v_inter=512,
        hidden=256, layers=4, heads=8, kv_heads=2, inter=688, vocab=32000,
        prompt_words=12, response_words=40, batch=4, steps=6, warmup=2, dtype="float32",
    ),
    # GPU: CLIP-L/14-336 (frozen, 576 tokens) + TinyLlama-1.1B shape, bf16.
    "gpu": dict(
        image=336, patch=14, v_hidden=1024, v_layers=24, v_heads=16, v_inter=4096,
        hidden=2048, layers=22, heads=32, kv_heads=4, inter=5632, vocab=32000,
        prompt_words=30, response_words=110, batch=8, steps=12, warmup=3, dtype="bfloat16",
    ),
}  # fmt: skip
ABLATION = {
    "A": dict(layout="plain", logits_only=False, reference="frozen", share_media=False),
    "B": dict(layout="plain", logits_only=False, reference="frozen", share_media=True),
    "C": dict(layout="shared", logits_only=False, reference="frozen", share_media=True),
    "D": dict(layout="shared", logits_only=True, reference="frozen", share_media=True),
    "E": dict(layout="shared", logits_only=True, reference="precomputed", share_media=True),
}


# ----------------------------------------------------------------------------- model and data
def llava_config(s: dict, vocab: int, image_token: int, pad: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        image_size=s["image"], patch_size=s["patch"], hidden_size=s["v_hidden"], num_hidden_layers=s["v_layers"],
        num_attention_heads=s["v_heads"], intermediate_size=s["v_inter"], projection_dim=s["v_hidden"],
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=max(vocab, s["vocab"]), hidden_size=s["hidden"], num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], intermediate_size=s["inter"],
        max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=pad,
    )  # fmt: skip
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token,
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=(s["image"] // s["patch"]) ** 2,
    )  # fmt: skip


def build_folder(s: dict, folder: Path, seed: int = 0) -> None:
    """Tokenizer + processor + random-init LlavaForConditionalGeneration saved to ``folder``."""
    from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    from mmalign.data.tokenizer import train_bpe_tokenizer

    rng = random.Random(seed)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(400)]
    tok = train_bpe_tokenizer(corpus, vocab_size=600)
    tok.chat_template = CHAT_TEMPLATE
    image_token = tok.convert_tokens_to_ids("<image>")
    config = llava_config(s, len(tok), image_token, tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(getattr(torch, s["dtype"]))
    model.save_pretrained(folder)
    ip = CLIPImageProcessor(
        size={"shortest_edge": s["image"]}, crop_size={"height": s["image"], "width": s["image"]},
        do_convert_rgb=True,
    )  # fmt: skip
    proc = LlavaProcessor(
        image_processor=ip, tokenizer=tok, patch_size=s["patch"], vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE, num_additional_image_tokens=1,
    )  # fmt: skip
    proc.save_pretrained(folder)
    tok.save_pretrained(folder)


def make_pairs(s: dict, n: int, seed: int = 0) -> list[dict]:
    """Seeded synthetic pairs: an image (exact processor size, so no resampling) + texts."""
    from PIL import Image

    rng = random.Random(seed)
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        arr = (torch.rand(s["image"], s["image"], 3, generator=g) * 255).to(torch.uint8).numpy()
        words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
        out.append(
            {
                "image": Image.fromarray(arr),
                "prompt": words(s["prompt_words"]) + "?",
                "chosen": words(s["response_words"]) + ".",
                "rejected": words(s["response_words"] + rng.randint(-5, 5)) + ".",
            }
        )
    return out


# ----------------------------------------------------------------------------- workers
def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def memory_report(base_kib: int) -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib) / 2**20


def run_trl(s: dict, folder: Path, beta: float, lr: float) -> dict:
    import datasets
    from transformers import AutoProcessor, LlavaForConditionalGeneration, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    base = rss_kib()
    pairs = make_pairs(s, s["batch"] * s["steps"])
    ds = datasets.Dataset.from_list(
        [
            {
                "images": [p["image"]],
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )
    dtype = getattr(torch, s["dtype"])
    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
    model.model.vision_tower.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(folder)
    times, losses = [], []

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    args = DPOConfig(
        output_dir=str(folder / "trl_out"), per_device_train_batch_size=s["batch"], max_steps=s["steps"],
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, beta=beta, logging_steps=1,
        report_to=[], save_strategy="no", gradient_checkpointing=False, max_length=None,
        bf16=s["dtype"] == "bfloat16", use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
        remove_unused_columns=False, seed=0, optim="adamw_torch", weight_decay=0.0, max_grad_norm=0.0,
        disable_tqdm=True,
    )  # fmt: skip

    class InOrder(DPOTrainer):  # the same batches, in the same order, as the mmalign runs
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    trainer = InOrder(
        model=model, args=args, train_dataset=ds, processing_class=processor, callbacks=[Timer()]
    )
    trainer.train()
    w = s["warmup"]
    sps = s["batch"] * (len(times) - w) / (times[-1] - times[w - 1])
    return {"samples_per_s": sps, "peak_gib": memory_report(base), "first_loss": losses[0], "losses": losses}


def run_mmalign(s: dict, folder: Path, beta: float, lr: float, variant: str) -> dict:
    import copy

    from mmalign.data.processor import MultimodalProcessor
    from mmalign.models.llava_hf import import_llava_hf
    from mmalign.preference.batch import collate_plain, collate_shared, encode_pair
    from mmalign.preference.config import DPOConfig
    from mmalign.preference.formats import PreferencePair
    from mmalign.preference.scoring import PreferenceModel
    from mmalign.preference.step import preference_step

    opt = ABLATION[variant]
    base = rss_kib()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, s["dtype"])
    pairs = make_pairs(s, s["batch"] * s["steps"])
    tmp = Path(tempfile.mkdtemp())
    prefs = []
    for i, p in enumerate(pairs):
        p["image"].save(tmp / f"{i}.png")
        prompt = [{"role": "user", "content": "<image>\n" + p["prompt"]}]
        prefs.append(PreferencePair(str(i), prompt, p["chosen"], p["rejected"], images=[tmp / f"{i}.png"]))
    policy, tok = import_llava_hf(folder, dtype=dtype)
    policy.vision.requires_grad_(False)
    policy.projector.requires_grad_(False)
    policy.to(dev)
    ref = copy.deepcopy(policy).eval() if opt["reference"] == "frozen" else None
    processor = MultimodalProcessor.for_model(policy, tok)
    model = PreferenceModel(
        policy, "frozen" if ref is not None else "none", ref, media_frozen=opt["share_media"],
        response_logits_only=opt["logits_only"],
    )  # fmt: skip
    collate = collate_shared if opt["layout"] == "shared" else collate_plain
    batches = []
    for b in range(s["steps"]):
        enc = [encode_pair(processor, p) for p in prefs[b * s["batch"] : (b + 1) * s["batch"]]]
        batches.append(collate(enc, processor.pad_token_id).to(dev, dtype))
    ref_logps, precompute_s = None, 0.0
    if ref is None:  # E: one no-grad pass over the data with the start weights
        t0 = time.perf_counter()
        with torch.no_grad():
            ref_logps = [model(b, with_reference=False)["policy"].float() for b in batches]
        precompute_s = time.perf_counter() - t0
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )
    step_cfg = DPOConfig(beta=beta, reference="precomputed" if ref is None else "frozen")
    model.train()
    times, losses = [], []
    for b, batch in enumerate(batches):
        loss, _ = preference_step(model, batch, None if ref_logps is None else ref_logps[b], step_cfg)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        losses.append(float(loss))
    w = s["warmup"]
    sps = s["batch"] * (len(times) - w) / (times[-1] - times[w - 1])
    n = len(pairs)
    return {
        "samples_per_s": sps,
        "peak_gib": memory_report(base),
        "first_loss": losses[0],
        "losses": losses,
        "precompute_s_per_sample": precompute_s / n,
    }


# ----------------------------------------------------------------------------- driver
def shape_check(s: dict) -> None:
    """Build the configs on the meta device and print parameter counts and the FLOP estimate."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(llava_config(s, 600, 599, 0))
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    llm = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    tokens = (s["image"] // s["patch"]) ** 2
    print(f"vision {vision / 1e6:.1f} M params, {tokens} image tokens; LLM {llm / 1e9:.3f} B params")
    text = int(1.3 * s["prompt_words"]), int(1.1 * s["response_words"])
    print(f"~{text[0]} prompt text tokens, ~{text[1]} response tokens per answer, batch {s['batch']}")


def necessary_tflop_per_pair(s: dict) -> float:
    """Forward+backward FLOPs a DPO pair needs at minimum (precomputed reference, shared prefix):
    6·N·T over the LLM for T = prompt + 2 responses, 2·N_v·576 for the frozen encoder forward."""
    n_llm = s["layers"] * (
        4 * s["hidden"] ** 2 * (1 + s["kv_heads"] / s["heads"]) / 2 + 3 * s["hidden"] * s["inter"]
    )
    img = (s["image"] // s["patch"]) ** 2
    t = img + 1.3 * s["prompt_words"] + 2 * 1.1 * s["response_words"]
    n_vis = s["v_layers"] * 12 * s["v_hidden"] ** 2
    resp = 2 * 1.1 * s["response_words"]
    return (6 * n_llm * t + 2 * n_vis * img + 6 * s["hidden"] * s["vocab"] * resp) / 1e12


def worker(args: argparse.Namespace) -> None:
    s = SIZES["gpu" if args.gpu else "cpu"]
    folder = Path(args.folder)
    res = (
        run_trl(s, folder, args.beta, args.lr)
        if args.worker == "trl"
        else run_mmalign(s, folder, args.beta, args.lr, args.worker)
    )
    print("RESULT " + json.dumps(res))


def spawn(name: str, args: argparse.Namespace, folder: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--folder",
        str(folder),
        "--beta",
        str(args.beta),
        "--lr",
        str(args.lr),
    ]
    if args.gpu:
        cmd.append("--gpu")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="device size (CLIP-L/336 + TinyLlama shape, bf16)")
    parser.add_argument("--shape-only", action="store_true", help="print the model sizes, run nothing")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--variants", default="A,B,C,D,E", help="mmalign ablation variants to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    s = SIZES["gpu" if args.gpu else "cpu"]
    if args.shape_only:
        return shape_check(s)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llava"
        build_folder(s, folder)
        results = {"trl": spawn("trl", args, folder)}
        for v in args.variants.split(","):
            results[v] = spawn(v, args, folder)
    trl = results["trl"]
    print(
        f"\nDPO, batch {s['batch']}, {s['steps']} steps ({s['warmup']} warm-up), β={args.beta}, {s['dtype']}, {device}"
    )
    print(f"{'system':<32}{'samples/s':>10}{'× TRL':>8}{'peak GiB':>10}{'× TRL':>8}{'1st loss':>12}")
    names = {"trl": "TRL DPOTrainer " + __import__("trl").__version__}
    names.update(
        {
            k: f"mmalign {k}: " + d
            for k, d in zip(
                "ABCDE",
                ["plain rows", "+ shared media", "+ shared prefix", "+ response logits", "+ precomputed ref"],
                strict=True,
            )
        }
    )
    for k, r in results.items():
        print(
            f"{names[k]:<32}{r['samples_per_s']:>10.3f}{r['samples_per_s'] / trl['samples_per_s']:>8.2f}"
            f"{r['peak_gib']:>10.3f}{r['peak_gib'] / trl['peak_gib']:>8.2f}{r['first_loss']:>12.6f}"
        )
    print(
        "\nloss per step (step 1: same weights, log 2 for all; later steps follow identical AdamW updates):"
    )
    for k, r in results.items():
        diff = max(abs(a - b) for a, b in zip(r["losses"], trl["losses"], strict=True))
        print(f"  {k:<4} " + " ".join(f"{x:.6f}" for x in r["losses"]) + f"   max |Δ vs TRL| {diff:.2e}")
    best = results.get("E") or results[list(results)[-1]]
    if "E" in results:
        e = results["E"]
        print(f"E's precompute pass: {e['precompute_s_per_sample'] * 1e3:.1f} ms/sample once per epoch; "
              f"samples/s incl. it: {1 / (1 / e['samples_per_s'] + e['precompute_s_per_sample']):.3f}")  # fmt: skip
    if torch.cuda.is_available():
        tflop = necessary_tflop_per_pair(s)
        print(
            f"necessary compute {tflop:.3f} TFLOP/pair → mmalign E {tflop * best['samples_per_s']:.1f} TFLOP/s"
        )


if __name__ == "__main__":
    main()
