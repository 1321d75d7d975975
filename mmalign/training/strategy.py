"""The one place that imports DeepSpeed: distributed init, engine, backward/step, checkpoints, gathering.

Trainers hold a :class:`Strategy` and call ``prepare`` / ``backward`` / ``step`` /
``save_checkpoint`` / ``load_checkpoint`` / ``full_state_dict``; they never import deepspeed.
The DeepSpeed JSON is generated from :class:`StrategyConfig`, or a user's JSON is used as given
(``"auto"`` values filled from the config, as transformers does).

CPU recipe (verified on this machine): ``DS_ACCELERATOR=cpu``, gloo, a torch AdamW as client
optimizer (DeepSpeed's fused Adam would compile an op); optimizer offload needs DeepSpeedCPUAdam.
"""

from __future__ import annotations

import atexit
import json
import os
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn


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


def _import_deepspeed() -> Any:
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


class Strategy:
    """DeepSpeed lifecycle for one training run.

    Args:
        cfg: the strategy options.
        seed: seeds python, numpy and torch on every rank (same seed: identical initialisation).
    """

    def __init__(self, cfg: StrategyConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.engine: Any = None
        self._ds_config: dict[str, Any] | None = None
        #: The run's resolved config (plain data), written into every checkpoint when set.
        self.run_config: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------- processes
    def setup_distributed(self) -> None:
        """Initialise the process group (a plain single process gets a world of one).

        Under MPI/SLURM launchers (OMPI_*/PMI_*/SLURM_* set) the rank variables are left to
        DeepSpeed's discovery.
        """
        launched_by_mpi = any(k in os.environ for k in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"))
        if "RANK" not in os.environ and not launched_by_mpi:
            for key, value in (
                ("MASTER_ADDR", "127.0.0.1"),
                ("RANK", "0"),
                ("LOCAL_RANK", "0"),
                ("WORLD_SIZE", "1"),
            ):
                os.environ.setdefault(key, value)
            os.environ.setdefault("MASTER_PORT", str(29500 + (os.getpid() % 2000)))
        deepspeed = _import_deepspeed()
        backend = self.cfg.backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        else:
            atexit.register(shm_buffer(self.rank).unlink, missing_ok=True)
        set_seed(self.seed)

    @property
    def rank(self) -> int:
        return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.cfg.precision]

    def barrier(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def all_reduce_mean(self, value: float) -> float:
        """Mean of a float over ranks (for logging)."""
        return self.all_reduce_sum(value) / self.world_size

    def all_reduce_sum(self, value: float) -> float:
        """Sum of a float over ranks (for logging)."""
        if not torch.distributed.is_initialized() or self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    # ----------------------------------------------------------------------------- config
    @property
    def global_batch_size(self) -> int:
        return self.cfg.micro_batch_size * self.cfg.grad_accum * self.world_size

    def ds_config(self) -> dict[str, Any]:
        """The DeepSpeed config dict (generated, or the user's JSON with ``auto`` values filled)."""
        if self._ds_config is not None:
            return self._ds_config
        c = self.cfg
        if c.deepspeed_config:
            path = Path(c.deepspeed_config)
            if not path.exists():
                raise FileNotFoundError(f"DeepSpeed config not found: {path}")
            ds = json.loads(path.read_text())
            fill = {
                "train_micro_batch_size_per_gpu": c.micro_batch_size,
                "gradient_accumulation_steps": c.grad_accum,
                "gradient_clipping": c.grad_clip,
                "train_batch_size": self.global_batch_size,
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
        self._ds_config = ds
        return ds

    @property
    def zero_stage(self) -> int:
        return int(self.ds_config().get("zero_optimization", {}).get("stage", 0))

    # ----------------------------------------------------------------------------- engine
    def make_optimizer(
        self, param_groups: list[dict[str, Any]], betas: tuple[float, float], eps: float
    ) -> Any:
        """AdamW over param groups; DeepSpeedCPUAdam when the optimizer is offloaded (config or JSON)."""
        offload = self.ds_config().get("zero_optimization", {}).get("offload_optimizer") or {}
        if offload.get("device", "none") != "none":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(param_groups, betas=betas, eps=eps, adamw_mode=True)
        return torch.optim.AdamW(param_groups, betas=betas, eps=eps)

    def check_weights_dtype(self, model: nn.Module) -> None:
        """An fp32 run needs every floating-point weight in float32 (DeepSpeed casts the model
        only for bf16/fp16, and fails on mixed dtypes with a bare assertion).

        Raises:
            ValueError: naming the weights' dtypes and the run's precision.
        """
        if self.cfg.precision != "fp32":
            return
        found: dict[str, int] = {}
        for p in model.parameters():
            if p.is_floating_point():
                found[str(p.dtype)] = found.get(str(p.dtype), 0) + p.numel()
        if set(found) - {"torch.float32"}:
            shares = ", ".join(f"{k.removeprefix('torch.')} ({v:,} values)" for k, v in sorted(found.items()))
            raise ValueError(
                f"strategy.precision is fp32 (float32) but the model's weights are {shares}: load the "
                "checkpoint in the run's precision (load_model(path, dtype=strategy.dtype), as the "
                "trainers do) or set strategy.precision to the checkpoint's (bf16)"
            )

    def prepare(self, model: nn.Module, optimizer: Any, scheduler: Any) -> Any:
        """Wrap ``model`` in a DeepSpeed engine; returns the engine (call it like the model).

        Raises:
            ValueError: weights in another dtype than an fp32 run's (:meth:`check_weights_dtype`).
        """
        self.check_weights_dtype(model)
        deepspeed = _import_deepspeed()
        if self.cfg.gradient_checkpointing:
            llm = getattr(model, "llm", model)
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "always_run_media"):
            # Every rank must run the same modules each step under ZeRO-3 (and it is cheap).
            model.always_run_media = True
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config()
        )
        return self.engine

    def describe(self) -> str:
        """One line on what runs: ZeRO stage, precision, world, optimizer class, offload, and the
        dtype the engine's trainable weights really have."""
        zero = self.ds_config().get("zero_optimization", {})
        inner = getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)
        off = [
            f"{k.split('_')[1]}→{v.get('device')}" for k, v in zero.items() if k.startswith("offload_") and v
        ]
        dtypes = sorted(
            {str(p.dtype).removeprefix("torch.") for p in self.engine.module.parameters() if p.requires_grad}
        )
        return (
            f"ZeRO-{self.zero_stage}, {self.cfg.precision}, world {self.world_size}, "
            f"optimizer {type(inner).__name__}"
            + (f", offload {' '.join(off)}" if off else "")
            + f"; trainable weights {'/'.join(dtypes)}"
        )

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        """Optimizer step at accumulation boundaries; returns True when the weights were updated."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return bool(boundary)

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def current_lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.engine.optimizer.param_groups]

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, directory: str | Path, tag: str, client_state: dict[str, Any]) -> None:
        """Save engine + optimizer + scheduler + ``client_state``, every rank's RNG states and
        (rank 0) :attr:`run_config` as ``<tag>/config.yaml``.

        ``latest`` is written by rank 0 only after every rank has finished its shards, and
        atomically (temp file + rename), so a kill during a save leaves the previous checkpoint as
        the one ``resume`` finds. Multi-node runs need ``directory`` on a shared filesystem.
        """
        directory = Path(directory)
        rng_dir = directory / tag
        rng_dir.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), rng_dir / f"rng_rank{self.rank}.pt")
        if self.is_main and self.run_config is not None:  # what resume compares against
            (rng_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config, sort_keys=False))
        self.barrier()
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
        self.barrier()
        if self.is_main:
            tmp = directory / f".latest.{os.getpid()}"
            with tmp.open("w") as f:
                f.write(tag)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / "latest")
        self.barrier()

    def load_checkpoint(self, directory: str | Path, tag: str | None = None) -> dict[str, Any] | None:
        """Restore the latest (or ``tag``) checkpoint; returns its client state, or None if none."""
        directory = Path(directory)
        if tag is None:
            latest = directory / "latest"
            if not latest.exists():
                return None
            tag = latest.read_text().strip()
        path, client_state = self.engine.load_checkpoint(str(directory), tag=tag)
        if path is None:
            raise RuntimeError(f"could not load DeepSpeed checkpoint {directory}/{tag}")
        rng_file = directory / tag / f"rng_rank{self.rank}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return dict(client_state or {}, tag=tag)

    def optimizer_hyperparameters(self) -> list[dict[str, Any]]:
        """Per param group: base learning rate (``initial_lr``), weight decay, betas, eps."""
        keys = ("initial_lr", "weight_decay", "betas", "eps")
        return [{k: g[k] for k in keys if k in g} for g in self.engine.optimizer.param_groups]

    def set_optimizer_hyperparameters(self, groups: list[dict[str, Any]]) -> None:
        """Put back hyperparameters (from :meth:`optimizer_hyperparameters`) after a checkpoint load
        restored the saved ones, and recompute each group's learning rate at the restored step.

        A loaded optimizer and LR scheduler bring their *saved* base learning rates, weight decay
        and betas; without this, a changed ``optim.lr`` would be silently ignored on resume.
        """
        current = self.engine.optimizer.param_groups
        if len(groups) != len(current):
            raise ValueError(f"the checkpoint has {len(current)} param groups, this run {len(groups)}")
        for group, saved in zip(current, groups, strict=True):
            group.update(saved)
        sched = self.engine.lr_scheduler
        if sched is not None and hasattr(sched, "lr_lambdas"):
            sched.base_lrs = [g["initial_lr"] for g in current]
            lrs = [
                base * f(sched.last_epoch) for base, f in zip(sched.base_lrs, sched.lr_lambdas, strict=True)
            ]
            for group, lr in zip(current, lrs, strict=True):
                group["lr"] = lr
            sched._last_lr = lrs

    def trainable_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor] | None:
        """Gather the full weights of ``module``'s trainable parameters (all ranks must call).

        Rank 0 gets CPU copies in the engine's dtype (the 16-bit weights in bf16/fp16 runs, as
        LLaVA saves them); other ranks get None. Frozen parameters are left out on purpose: they
        never changed, and their exact originals are in the start checkpoint (a bf16 engine only
        holds them rounded).
        """
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        ctx = nullcontext()
        if self.zero_stage == 3:
            deepspeed = _import_deepspeed()
            ctx = deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None)
        with ctx:
            if not self.is_main:
                return None
            return {n: p.detach().to("cpu", copy=True) for n, p in named}

    @contextmanager
    def gathered(self, module: nn.Module):
        """Temporarily hold full parameters of ``module`` on every rank (ZeRO-3), e.g. to inspect them."""
        if self.zero_stage != 3:
            yield
            return
        deepspeed = _import_deepspeed()
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield


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
