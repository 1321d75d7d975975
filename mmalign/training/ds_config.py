"""What the strategy runs with, without importing DeepSpeed: :class:`StrategyConfig`, the DeepSpeed
JSON it becomes (:func:`build_ds_config`, :func:`eval_ds_config`), seeds and RNG states.

:mod:`mmalign.training.strategy` is the one module that imports DeepSpeed; this one holds the
plain data and functions around it so that configs and tests need no DeepSpeed import.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch


def shm_buffer(rank: int) -> Path:
    """The shared-memory segment DeepSpeed's CPU allreduce creates for ``rank`` of this job.

    DeepSpeed 0.19 (``ops/csrc/cpu/comm/shm.cpp``) creates
    ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`` and never
    unlinks it: 66 MB of RAM per rank and run stay taken until reboot (measured: 317 of them, 21 GB,
    had filled this machine's /dev/shm and got a DPO rank OOM-killed). The strategy unlinks its own
    at exit; the other ranks' mappings stay valid.
    """
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}_{rank}"
    return Path("/dev/shm") / name


@dataclass
class StrategyConfig:
    """Distributed training options.

    Attributes:
        zero_stage: 0–3.
        precision: ``fp32``, ``bf16`` or ``fp16`` (dynamic loss scaling).
        micro_batch_size: examples per rank per forward.
        grad_accum: micro-batches per optimizer step.
        grad_clip: max global gradient norm (0 = off).
        offload_optimizer / offload_params: ZeRO-Offload to CPU (optimizer: stage ≥ 1; params: stage 3).
        deepspeed_config: path of a DeepSpeed JSON used as given (``"auto"`` values filled in).
        backend: ``auto`` (nccl with CUDA, else gloo), ``gloo`` or ``nccl``.
        stage3_max_live_parameters / stage3_max_reuse_distance / stage3_param_persistence_threshold:
            ZeRO-3 knobs; small values force real gathers even for tiny models (tests).
        gradient_checkpointing: recompute LLM activations in backward.
    """

    zero_stage: int = 3
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    micro_batch_size: int = 8
    grad_accum: int = 1
    grad_clip: float = 1.0
    offload_optimizer: bool = False
    offload_params: bool = False
    deepspeed_config: str | None = None
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    stage3_max_live_parameters: int = 1_000_000_000
    stage3_max_reuse_distance: int = 1_000_000_000
    stage3_param_persistence_threshold: int = 100_000
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0–3, got {self.zero_stage}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.micro_batch_size < 1 or self.grad_accum < 1:
            raise ValueError("micro_batch_size and grad_accum must be ≥ 1")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage ≥ 1")


def build_ds_config(c: StrategyConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict of a training engine: generated from ``c``, or the user's JSON
    (``c.deepspeed_config``) with ``"auto"`` values filled from ``c`` (as transformers does).

    Raises:
        FileNotFoundError: the JSON does not exist.
        ValueError: the JSON's micro-batch or accumulation contradicts the typed config.
    """
    if c.deepspeed_config:
        path = Path(c.deepspeed_config)
        if not path.exists():
            raise FileNotFoundError(f"DeepSpeed config not found: {path}")
        ds = json.loads(path.read_text())
        fill = {
            "train_micro_batch_size_per_gpu": c.micro_batch_size,
            "gradient_accumulation_steps": c.grad_accum,
            "gradient_clipping": c.grad_clip,
            "train_batch_size": c.micro_batch_size * c.grad_accum * world_size,
        }
        for key, value in fill.items():
            if ds.get(key) == "auto":
                ds[key] = value
        for key in ("bf16", "fp16"):
            if isinstance(ds.get(key), dict) and ds[key].get("enabled") == "auto":
                ds[key]["enabled"] = c.precision == key
        # The training loop follows the typed config: a JSON that says otherwise is an error.
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            if ds.get(key, fill[key]) != fill[key]:
                raise ValueError(
                    f'{path}: {key}={ds[key]} but the config says {fill[key]}; set it to "auto" or '
                    "change strategy.micro_batch_size / strategy.grad_accum"
                )
    else:
        zero: dict[str, Any] = {"stage": c.zero_stage}
        if c.zero_stage == 3:
            zero.update(
                stage3_max_live_parameters=c.stage3_max_live_parameters,
                stage3_max_reuse_distance=c.stage3_max_reuse_distance,
                stage3_param_persistence_threshold=c.stage3_param_persistence_threshold,
                stage3_gather_16bit_weights_on_model_save=True,
            )
        if c.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if c.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        ds = {
            "train_micro_batch_size_per_gpu": c.micro_batch_size,
            "gradient_accumulation_steps": c.grad_accum,
            "gradient_clipping": c.grad_clip,
            "zero_optimization": zero,
            "bf16": {"enabled": c.precision == "bf16"},
            "fp16": {"enabled": c.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
    ds["zero_allow_untested_optimizer"] = True
    return ds


def eval_ds_config(train: dict[str, Any], offload_params: bool = False) -> dict[str, Any]:
    """The DeepSpeed config of a frozen (inference) engine next to the training config ``train``.

    As OpenRLHF's ``get_ds_eval_config``: under ZeRO-3 the frozen model's parameters are
    partitioned like the trained ones (stage 3, optionally offloaded to CPU); below stage 3 it is
    a plain stage-0 engine. Precision and batch size follow ``train``; no optimizer state exists.
    """
    stage = int(train.get("zero_optimization", {}).get("stage", 0))
    zero: dict[str, Any] = {"stage": 3 if stage == 3 else 0}
    if stage == 3:
        for key in (
            "stage3_max_live_parameters",
            "stage3_max_reuse_distance",
            "stage3_param_persistence_threshold",
        ):
            if key in train["zero_optimization"]:
                zero[key] = train["zero_optimization"][key]
        if offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": train["train_micro_batch_size_per_gpu"],
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "bf16": {"enabled": bool((train.get("bf16") or {}).get("enabled"))},
        "fp16": {"enabled": bool((train.get("fp16") or {}).get("enabled"))},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
