"""Assemble an LMM checkpoint directory from local component checkpoints (the start of LLaVA stage 1).

    python train/assemble.py --vision /ckpt/clip-vit-large-patch14-336 --llm /ckpt/vicuna-7b-v1.5 \
        --preset llava15 --out /ckpt/llava15-7b-init

``--preset llava15``: penultimate CLIP layer, CLS dropped, ``mlp2x_gelu`` projector (freshly
initialised), pad-to-square images, ``vicuna_v1`` template. ``--preset custom`` takes the options
below. The vision folder may hold a transformers vision tower, a full CLIP/SigLIP model (only its
tower is kept) or timm weights (``--timm-model NAME``). ``<image>``/``<video>`` tokens are added
to the tokenizer if missing. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys

import torch

from mmalign.data.media import ImageProcessorConfig
from mmalign.models.builders import llava15
from mmalign.models.checkpoint import build_lmm, save_lmm
from mmalign.models.lmm import LMMConfig
from mmalign.models.vision import VisionConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="assemble an LMM from local vision + LLM checkpoints")
    p.add_argument("--vision", required=True)
    p.add_argument("--llm", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", choices=["llava15", "custom"], default="llava15")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bf16",
        help="dtype of the written weights (default: bf16); trainers load them in their strategy.precision",
    )
    p.add_argument("--projector", default="mlp2x_gelu")
    p.add_argument("--feature-layer", type=int, default=-2)
    p.add_argument("--select", choices=["patch", "cls_patch"], default="patch")
    p.add_argument("--timm-model", default=None, help="timm architecture name for timm weights")
    p.add_argument("--image-mode", choices=["pad", "resize"], default="pad")
    p.add_argument("--template", default=None, help="vicuna_v1 | llama3 | chatml (default: tokenizer's own)")
    p.add_argument("--video-frames", type=int, default=8)
    p.add_argument("--video-pool", type=int, default=1)
    args = p.parse_args(argv)

    dtype = DTYPES[args.dtype]
    if args.preset == "llava15":
        model, tokenizer = llava15(args.vision, args.llm, dtype=dtype, video_frames=args.video_frames)
    else:
        kind = "timm" if args.timm_model else "hf"
        cfg = LMMConfig(
            vision=VisionConfig(
                kind=kind, feature_layer=args.feature_layer, select=args.select, timm_model=args.timm_model
            ),
            projector=args.projector,
            video_frames=args.video_frames,
            video_pool=args.video_pool,
            image_processor=ImageProcessorConfig(mode=args.image_mode),
            template=args.template,
        )
        model, tokenizer = build_lmm(args.vision, args.llm, cfg, dtype=dtype)
    out = save_lmm(model, tokenizer, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {n / 1e6:.1f} M parameters, {model.image_tokens} tokens per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
