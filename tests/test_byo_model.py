"""The README's "Bring your own model" route end to end, at tiny size, as a new user takes it.

Local component checkpoints (a CLIP vision tower and a Llama LLM built from config and saved, as a
user's downloads would be) → ``train/assemble.py`` → SFT with LoRA on a hand-written LLaVA file →
DPO with LoRA on a POVID-format file → a reward model on a LLaVA-RLHF-format file (factual
augmentation) → the llava-hf export loaded by transformers' ``AutoProcessor`` +
``LlavaForConditionalGeneration``, answering as mmalign does → the same export imported back →
``eval/chat.py serve`` answering the real ``openai`` client. Every trainer runs on 2 CPU ranks
under the deepspeed launcher. Slow (a few minutes): marked ``slow`` and ``multiproc``.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from tests.distributed import ROOT, deepspeed_cmd, dist_env, free_port, run

pytestmark = [pytest.mark.slow, pytest.mark.multiproc]

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230)}
STRATEGY = {"zero_stage": 3, "precision": "fp32", "micro_batch_size": 2, "grad_accum": 1}
LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}


def _image(path: Path, colour: str, size: tuple[int, int]) -> str:
    img = Image.new("RGB", size, (250, 250, 250))
    w, h = size
    img.paste(COLOURS[colour], (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    img.save(path)
    return path.name


def _write_data(root: Path) -> None:
    """One file per record format the README shows (images: squares and non-square PNGs)."""
    images = root / "images"
    images.mkdir(parents=True)
    sft, povid, rlhf = [], [], []
    for i, (colour, size) in enumerate([(c, s) for c in COLOURS for s in ((40, 40), (64, 32), (32, 48))]):
        name = _image(images / f"{colour}_{i}.png", colour, size)
        wrong = next(c for c in COLOURS if c != colour)
        sft.append(
            {
                "id": f"sft-{i}",
                "image": f"images/{name}",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat color is the square?"},
                    {"from": "gpt", "value": f"The square is {colour}."},
                ],
            }
        )
        povid.append(
            {
                "id": f"povid-{i}",
                "image": f"images/{name}",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": f"A {colour} square."},
                ],
                "rejected_conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": f"A {wrong} square and a circle."},
                ],
            }
        )
        rlhf.append(
            {
                "id": f"rlhf-{i}",
                "image": f"images/{name}",
                "conversations": [{"from": "human", "value": "<image>\nWhat is in the image?"}],
                "output_1": {"value": f"A {wrong} square."},
                "output_2": {"value": f"A {colour} square."},
                "preference": 2,
                "captions": [f"A {colour} square on a white background."],
            }
        )
    (root / "sft.json").write_text(json.dumps(sft, indent=1))  # a JSON list, as LLaVA ships
    (root / "povid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in povid))
    (root / "rlhf.json").write_text(json.dumps(rlhf, indent=1))


def _llm_tokenizer():
    """A byte-level BPE tokenizer as LLMs ship them (every byte encodable, decodes to the text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import CORPUS

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        CORPUS + ["What color is the square? The square is red green blue."] * 20, trainer
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _components(root: Path) -> None:
    """A CLIP vision folder and a causal-LM folder, saved as a user's downloads are."""
    from transformers import AutoModelForCausalLM, CLIPImageProcessor

    from mmalign.models.builders import tiny_llm_config, tiny_vision

    vision = tiny_vision(
        kind="clip",
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
    )
    vision.save(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "clip"
    )
    tok = _llm_tokenizer()
    AutoModelForCausalLM.from_config(tiny_llm_config(len(tok), 48, 2, 4, 96)).save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")


def _config(path: Path, **fields) -> Path:
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def _launch(script: str, cfg: Path) -> subprocess.CompletedProcess:
    return run(deepspeed_cmd(ROOT / "train" / script, ["--config", str(cfg)]), timeout=420)


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_bring_your_own_model_end_to_end(tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmalign.data.formats import load_llava
    from mmalign.data.processor import MultimodalProcessor
    from mmalign.models.checkpoint import load_lmm
    from mmalign.models.llava_hf import import_llava_hf
    from mmalign.preference.reward_model import load_reward_model
    from mmalign.training.generation import generate_responses

    _components(tmp_path)
    _write_data(tmp_path / "data")
    data = tmp_path / "data"

    # 1. Assemble the start checkpoint from the two local folders (LLaVA-1.5's recipe).
    run(
        [sys.executable, str(ROOT / "train" / "assemble.py"), "--vision", str(tmp_path / "clip"),
         "--llm", str(tmp_path / "llm"), "--preset", "llava15", "--dtype", "fp32", "--out", str(tmp_path / "init")]
    )  # fmt: skip

    # 2. SFT with LoRA (projector trained fully) on the LLaVA file.
    sft = tmp_path / "sft"
    _launch(
        "sft.py",
        _config(
            tmp_path / "sft.yaml", model=str(tmp_path / "init"), out=str(sft),
            data=[{"path": str(data / "sft.json")}], lora=LORA, strategy=STRATEGY,
            parts={"train_vision": False, "train_projector": True, "train_llm": True},
            optim={"lr": 5e-3, "warmup_steps": 0}, max_steps=6, max_length=256, log_every=1,
        ),
    )  # fmt: skip
    losses = _losses(sft)
    assert len(losses) == 6 and losses[-1] < losses[0]
    # The rendered prompt kept every word of the record (vicuna_v1 template from the preset).
    model, tok = load_lmm(sft / "final")
    proc = MultimodalProcessor.for_model(model, tok)
    example = load_llava(data / "sft.json")[0]
    rendered = tok.decode(proc.encode(example)["input_ids"])
    assert "What color is the square?" in rendered and "The square is red." in rendered

    # 3. DPO with LoRA (reference = adapter disabled) on the POVID file; llava-hf export.
    dpo = tmp_path / "dpo"
    _launch(
        "dpo.py",
        _config(
            tmp_path / "dpo.yaml", model=str(sft / "final"), out=str(dpo),
            data=[{"path": str(data / "povid.jsonl"), "format": "povid"}], lora=LORA, strategy=STRATEGY,
            reference="lora", parts={"train_vision": False, "train_projector": False, "train_llm": True},
            optim={"lr": 5e-3, "warmup_steps": 0}, max_steps=3, max_length=320, log_every=1,
            export_llava_hf=True,
        ),
    )  # fmt: skip
    assert abs(_losses(dpo)[0] - 0.693147) < 1e-3  # policy == reference at the first step
    assert (dpo / "final_llava_hf" / "config.json").exists()

    # 4. A factually augmented reward model on the LLaVA-RLHF file.
    reward = tmp_path / "reward"
    _launch(
        "reward.py",
        _config(
            tmp_path / "reward.yaml", model=str(sft / "final"), out=str(reward),
            data=[{"path": str(data / "rlhf.json"), "format": "llava_rlhf"}], lora=LORA, strategy=STRATEGY,
            reward_prompt=str(ROOT / "configs" / "prompts" / "fact_rlhf_reward.txt"),
            parts={"train_vision": False, "train_projector": False, "train_llm": True},
            optim={"lr": 5e-3, "warmup_steps": 0}, max_steps=3, max_length=512, log_every=1,
        ),
    )  # fmt: skip
    rm, _ = load_reward_model(reward / "final")
    assert rm.head.weight.abs().sum() > 0

    # 5. The llava-hf export in transformers answers as mmalign does, on a non-square image.
    policy, ptok = load_lmm(dpo / "final")
    img_path = data / "images" / "blue_7.png"
    assert Image.open(img_path).size == (64, 32)
    question = load_llava(data / "sft.json")[7]
    question.messages = question.messages[:1]
    ours = generate_responses(
        policy, MultimodalProcessor.for_model(policy, ptok), [question], max_new_tokens=6
    )[0]
    hf_dir = dpo / "final_llava_hf"
    processor = AutoProcessor.from_pretrained(hf_dir)
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What color is the square?"}],
        }
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.open(img_path), text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=6, do_sample=False)
    theirs = processor.tokenizer.decode(
        out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    ).strip()
    assert theirs == ours

    # 6. The export imported back (its tokenizer carries the exported typed-content chat template).
    imported, itok = import_llava_hf(hf_dir)
    iproc = MultimodalProcessor.for_model(imported, itok)
    assert "What color is the square?" in itok.decode(iproc.encode_prompt(question)["input_ids"])

    # 7. Serve the DPO model under a name of the user's choosing; the openai client asks about the image.
    from openai import OpenAI

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "eval" / "chat.py"), "serve", "--model", f"byo-dpo={dpo / 'final'}",
         "--port", str(port)],
        cwd=ROOT, env=dist_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                models = client.models.list()
                break
            except Exception as exc:
                if time.monotonic() > deadline or server.poll() is not None:
                    log = server.stdout.read() if server.poll() is not None else ""
                    raise AssertionError(f"the server did not start:\n{log}") from exc
                time.sleep(0.5)
        assert [m.id for m in models.data] == ["byo-dpo"]
        buf = io.BytesIO()
        Image.open(img_path).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        reply = client.chat.completions.create(
            model="byo-dpo",
            messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "What color is the square?"},
            ]}],
            max_tokens=6, temperature=0,
        )  # fmt: skip
        assert reply.model == "byo-dpo"
        assert reply.choices[0].message.content.strip() == ours
    finally:
        server.terminate()
        server.wait(timeout=30)
