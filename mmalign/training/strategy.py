"""The one place that imports DeepSpeed: processes, engines, backward/step, checkpoints, gathering.

Trainers hold a :class:`Strategy` and call ``prepare`` (each trainable model: policy, value,
reward model), ``prepare_frozen`` (each inference model: reference, reward model during RL),
``backward`` / ``step``, ``save_checkpoint`` / ``load_checkpoint`` (every trainable engine) and
``generation_weights`` (the policy's weights gathered once for a rollout); they never import
deepspeed. What a model needs from the engine is passed explicitly, never guessed from its
attributes: the modules to checkpoint (``checkpointing=[lmm.llm]``) and the models that obey the
blank-media rule (``blank_media=[lmm]``: under ZeRO-3 every rank must run the same modules each
step, so an LMM runs its encoder on a blank image when a batch has no media).

The design follows OpenRLHF's ``DeepspeedStrategy`` (one ``deepspeed.initialize`` per trainable
model; frozen models as ZeRO-3-partitioned inference engines), without its ``args`` bag. The
DeepSpeed JSON comes from :mod:`mmalign.training.ds_config`.

CPU recipe (verified on this machine): ``DS_ACCELERATOR=cpu``, gloo, a torch AdamW as client
optimizer (DeepSpeed's fused Adam would compile an op); optimizer offload needs DeepSpeedCPUAdam.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mmalign.training.ds_config import (  # noqa: F401  (re-exported: the old import paths)
    StrategyConfig,
    build_ds_config,
    eval_ds_config,
    rng_state,
    set_rng_state,
    set_seed,
    shm_buffer,
)


def _import_deepspeed() -> Any:
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    return deepspeed


class Strategy:
    """DeepSpeed lifecycle of a run: its processes and the engines it holds.

    Args:
        cfg: the strategy options.
        seed: seeds python, numpy and torch on every rank (same seed: identical initialisation).

    Attributes:
        engines: the trainable engines by name, in the order prepared; the first is
            :attr:`engine` (the policy), whose checkpoint layout is the single-engine one.
        frozen: the inference engines (or plain modules below ZeRO-3) by name.
        run_config: the run's resolved config (plain data), written into every checkpoint when set.
        loaded_state: the client state of the checkpoint :meth:`load_checkpoint` last restored.
    """

    def __init__(self, cfg: StrategyConfig, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed
        self.engines: dict[str, Any] = {}
        self.frozen: dict[str, Any] = {}
        self._ds_config: dict[str, Any] | None = None
        self._checkpointed: list[nn.Module] = []
        self.run_config: dict[str, Any] | None = None
        self.loaded_state: dict[str, Any] | None = None  # client state of the checkpoint last loaded

    @property
    def engine(self) -> Any:
        """The first trainable engine (None before :meth:`prepare`)."""
        return next(iter(self.engines.values()), None)

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

    def shutdown(self) -> None:
        """Leave the process group once every rank is done: a barrier, then
        ``destroy_process_group``, so the communication backend's threads are joined before the
        interpreter exits. (A rank exiting with them alive can abort — SIGABRT, "terminate called
        without an active exception" — and was seen to, rarely, after a finished 2-rank run.)"""
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def all_reduce_max(self, value: float) -> float:
        """Maximum of a float over ranks (for logging)."""
        if not torch.distributed.is_initialized() or self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

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
        """The training engines' DeepSpeed config (:func:`~mmalign.training.ds_config.build_ds_config`)."""
        if self._ds_config is None:
            self._ds_config = build_ds_config(self.cfg, self.world_size)
        return self._ds_config

    @property
    def zero_stage(self) -> int:
        return int(self.ds_config().get("zero_optimization", {}).get("stage", 0))

    # ----------------------------------------------------------------------------- engines
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

    def _apply_model_rules(
        self, checkpointing: Sequence[nn.Module], blank_media: Sequence[nn.Module]
    ) -> None:
        if self.cfg.gradient_checkpointing:
            if not checkpointing:
                raise ValueError(
                    "strategy.gradient_checkpointing is on but no module to checkpoint was passed: "
                    "prepare(..., checkpointing=[lmm.llm])"
                )
            for module in checkpointing:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                self._checkpointed.append(module)
        for module in blank_media:
            module.always_run_media = True

    def _new_name(self, name: str) -> str:
        if name in self.engines or name in self.frozen:
            raise ValueError(f"an engine named {name!r} is already prepared")
        return name

    def prepare(
        self,
        model: nn.Module,
        optimizer: Any,
        scheduler: Any,
        *,
        checkpointing: Sequence[nn.Module] = (),
        blank_media: Sequence[nn.Module] = (),
        name: str = "policy",
    ) -> Any:
        """Wrap a trainable ``model`` in a DeepSpeed engine; returns it (call it like the model).

        Args:
            model: the module the engine trains (e.g. ``PreferenceModel``, ``RewardModel``, an LMM).
            optimizer: its optimizer (:meth:`make_optimizer`); scheduler: its LR schedule or None.
            checkpointing: Hugging Face modules whose activations are recomputed in backward when
                ``strategy.gradient_checkpointing`` is on (e.g. ``[lmm.llm]``); required then.
            blank_media: LMMs that run their encoder every step (a blank image when a batch has
                none), so every rank runs the same modules under ZeRO-3.
            name: the engine's name in :attr:`engines` and in checkpoints.

        Raises:
            ValueError: weights in another dtype than an fp32 run's (:meth:`check_weights_dtype`);
                gradient checkpointing on without ``checkpointing``; a name taken.
        """
        self.check_weights_dtype(model)
        name = self._new_name(name)
        self._apply_model_rules(checkpointing, blank_media)
        engine, _, _, _ = _import_deepspeed().initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config()
        )
        self.engines[name] = engine
        return engine

    def prepare_frozen(
        self,
        model: nn.Module,
        *,
        blank_media: Sequence[nn.Module] = (),
        name: str = "reference",
        offload: bool = False,
    ) -> Any:
        """Hold a frozen (inference) model: no gradient, no optimizer state, eval mode.

        Under ZeRO-3 it becomes a DeepSpeed inference engine whose parameters are partitioned over
        the ranks like the trained ones (``offload`` puts them on CPU); below stage 3 it is the
        module itself on the device, in the run's precision. Call the result like the model.
        """
        name = self._new_name(name)
        model.requires_grad_(False)
        model.eval()
        for module in blank_media:
            module.always_run_media = True
        if self.zero_stage == 3:
            config = eval_ds_config(self.ds_config(), offload)
            held, _, _, _ = _import_deepspeed().initialize(model=model, config=config)
            held.eval()
        else:
            held = (
                model.to(self.device) if self.cfg.precision == "fp32" else model.to(self.device, self.dtype)
            )
        self.frozen[name] = held
        return held

    def _engine(self, engine: Any) -> Any:
        return self.engine if engine is None else engine

    def describe(self) -> str:
        """One line on what runs: ZeRO stage, precision, world, optimizer class, offload, the
        dtype the trainable weights really have, the modules really checkpointing, and the other
        engines by name."""
        zero = self.ds_config().get("zero_optimization", {})
        inner = getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)
        off = [
            f"{k.split('_')[1]}→{v.get('device')}" for k, v in zero.items() if k.startswith("offload_") and v
        ]
        dtypes = sorted(
            {str(p.dtype).removeprefix("torch.") for p in self.engine.module.parameters() if p.requires_grad}
        )
        others = [*list(self.engines)[1:], *(f"{n} (frozen)" for n in self.frozen)]
        checkpointed = sum(bool(getattr(m, "is_gradient_checkpointing", False)) for m in self._checkpointed)
        return (
            f"ZeRO-{self.zero_stage}, {self.cfg.precision}, world {self.world_size}, "
            f"optimizer {type(inner).__name__}"
            + (f", offload {' '.join(off)}" if off else "")
            + f"; trainable weights {'/'.join(dtypes)}"
            + (f"; gradient checkpointing in {checkpointed} module(s)" if checkpointed else "")
            + (f"; engines {', '.join([next(iter(self.engines)), *others])}" if others else "")
        )

    def backward(self, loss: torch.Tensor, engine: Any = None) -> None:
        """Backpropagate ``loss`` through ``engine`` (default: the first trainable one)."""
        self._engine(engine).backward(loss)

    def step(self, engine: Any = None) -> bool:
        """Optimizer step at accumulation boundaries; returns True when the weights were updated."""
        engine = self._engine(engine)
        boundary = engine.is_gradient_accumulation_boundary()
        engine.step()
        return bool(boundary)

    def grad_norm(self, engine: Any = None) -> float | None:
        norm = self._engine(engine).get_global_grad_norm()
        return None if norm is None else float(norm)

    def current_lrs(self, engine: Any = None) -> list[float]:
        return [float(g["lr"]) for g in self._engine(engine).optimizer.param_groups]

    @contextmanager
    def generation_weights(self, engine: Any = None, gather: bool = True) -> Iterator[bool]:
        """Hold an engine's full weights for a rollout; yields whether ``generate`` needs
        ``synced_gpus``.

        Under ZeRO-3 with ``gather`` (the weights fit on one device) the parameters are gathered
        ONCE and the ZeRO-3 hooks are taken off for the duration (as TRL's
        ``unwrap_model_for_generation``), so decoding does no per-token all-gather and ranks may
        stop at different lengths: yields False. Without ``gather`` nothing is gathered and every
        forward gathers layer by layer: yields True (ranks must step together). Below ZeRO-3:
        yields False. The weights must not change inside (no optimizer step).
        """
        engine = self._engine(engine)
        if self.zero_stage != 3 or not gather:
            yield self.zero_stage == 3
            return
        deepspeed = _import_deepspeed()
        offload = getattr(engine.optimizer, "parameter_offload", engine.optimizer)
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            for p in params:
                p.ds_active_sub_modules.clear()
            for hook in [*offload.forward_hooks, *offload.backward_hooks]:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
            try:
                yield False
            finally:
                offload._register_deepspeed_module(offload.module)

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, directory: str | Path, tag: str, client_state: dict[str, Any]) -> None:
        """Save every trainable engine (weights, optimizer, scheduler), ``client_state``, every
        rank's RNG states and (rank 0) :attr:`run_config` as ``<tag>/config.yaml``.

        The first engine is saved as DeepSpeed lays out a single engine (``<tag>/``), each other
        one under ``<tag>/<name>/``. ``latest`` is written by rank 0 only after every rank has
        finished its shards, and atomically (temp file + rename), so a kill during a save leaves
        the previous checkpoint as the one ``resume`` finds. Multi-node runs need ``directory``
        on a shared filesystem.
        """
        directory = Path(directory)
        rng_dir = directory / tag
        rng_dir.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), rng_dir / f"rng_rank{self.rank}.pt")
        if self.is_main and self.run_config is not None:  # what resume compares against
            (rng_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config, sort_keys=False))
        self.barrier()
        for i, (name, engine) in enumerate(self.engines.items()):
            where, sub = (directory, tag) if i == 0 else (directory / tag, name)
            state = client_state if i == 0 else {}
            engine.save_checkpoint(str(where), tag=sub, client_state=state, save_latest=False)
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
        """Restore every trainable engine from the latest (or ``tag``) checkpoint; returns the
        client state, or None if there is none."""
        directory = Path(directory)
        if tag is None:
            latest = directory / "latest"
            if not latest.exists():
                return None
            tag = latest.read_text().strip()
        client_state: dict[str, Any] | None = None
        for i, (name, engine) in enumerate(self.engines.items()):
            where, sub = (directory, tag) if i == 0 else (directory / tag, name)
            path, state = engine.load_checkpoint(str(where), tag=sub)
            if path is None:
                raise RuntimeError(f"could not load DeepSpeed checkpoint {where}/{sub} (engine {name})")
            client_state = state if i == 0 else client_state
        rng_file = directory / tag / f"rng_rank{self.rank}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        self.loaded_state = dict(client_state or {}, tag=tag)
        return self.loaded_state

    def optimizer_hyperparameters(self) -> dict[str, list[dict[str, Any]]]:
        """Per trainable engine, per param group: base learning rate (``initial_lr``), weight
        decay, betas, eps."""
        keys = ("initial_lr", "weight_decay", "betas", "eps")
        return {
            name: [{k: g[k] for k in keys if k in g} for g in engine.optimizer.param_groups]
            for name, engine in self.engines.items()
        }

    def set_optimizer_hyperparameters(self, saved: dict[str, list[dict[str, Any]]]) -> None:
        """Put back hyperparameters (from :meth:`optimizer_hyperparameters`) after a checkpoint load
        restored the saved ones, and recompute each group's learning rate at the restored step.

        A loaded optimizer and LR scheduler bring their *saved* base learning rates, weight decay
        and betas; without this, a changed ``optim.lr`` would be silently ignored on resume.
        """
        for name, groups in saved.items():
            self._set_hyperparameters(self.engines[name], groups)

    @staticmethod
    def _set_hyperparameters(engine: Any, groups: list[dict[str, Any]]) -> None:
        current = engine.optimizer.param_groups
        if len(groups) != len(current):
            raise ValueError(f"the checkpoint has {len(current)} param groups, this run {len(groups)}")
        for group, saved in zip(current, groups, strict=True):
            group.update(saved)
        sched = engine.lr_scheduler
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
    def gathered(self, module: nn.Module) -> Iterator[None]:
        """Temporarily hold full parameters of ``module`` on every rank (ZeRO-3), e.g. to inspect them."""
        if self.zero_stage != 3:
            yield
            return
        deepspeed = _import_deepspeed()
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield
