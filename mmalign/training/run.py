"""One run lifecycle shared by the trainers: processes, data order, optimizer + schedule, resume,
logging, periodic checkpoints, pruning and the final export.

A trainer builds its model and data, then::

    run = TrainingRun(cfg, "dpo")                         # processes (Strategy.setup_distributed)
    ...load the model, check the data...
    run.plan(len(pairs))                                  # ExampleOrder + total steps
    optimizer, scheduler = run.optimizer(param_groups)    # AdamW + warmup/cosine
    engine = run.strategy.prepare(model, optimizer, scheduler, checkpointing=..., blank_media=...)
    if run.begin() is None:                               # resume (config-change check), logger
        return 2
    run.train(lambda indices: step(indices))              # the loop: backward/step, log, save
    run.close(run.finish(policy))                         # final checkpoint, prune, export; log

``step(indices)`` is the method's own part: this rank's example indices of one micro-batch →
``(loss, metrics)``; a ``tokens`` entry in the metrics is reported as ``tok/s``. The run config
is a :class:`~mmalign.training.run_config.RunConfig` (SFT, DPO and reward configs extend it).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from mmalign.config import ConfigError
from mmalign.data.datasets import ExampleOrder
from mmalign.models.lmm import LMM
from mmalign.training.checkpoint import begin_run, export_final, prune_checkpoints, step_tag
from mmalign.training.logging import MetricsLogger, process_usage
from mmalign.training.parts import lr_lambda
from mmalign.training.strategy import Strategy

StepFn = Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]]


class TrainingRun:
    """The lifecycle of one training run around a method's step.

    Args:
        cfg: the run config (``strategy``, ``seed``, ``out``, ``max_steps``, ``epochs``,
            ``optim``, ``save_every``, ``keep_last``, ``log_every``, ``resume``, ``lora``, ...).
        name: the trainer's name in log lines (``sft``, ``dpo``, ``reward``).

    Attributes:
        strategy: the :class:`Strategy`, its processes started.
        order: the deterministic data order (after :meth:`plan`).
        total_steps / start_step: the run's length and where it starts (after :meth:`begin`).
        step / micro: the optimizer step and micro-batch the loop is at.
        log: the metrics logger (after :meth:`begin`).
    """

    def __init__(self, cfg: Any, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.strategy = Strategy(cfg.strategy, seed=cfg.seed)
        self.strategy.setup_distributed()
        self._start_usage = process_usage(self.strategy.device.type)  # before any model is loaded
        self.order: ExampleOrder | None = None
        self.total_steps = 0
        self.start_step = 0
        self.n_examples = 0
        self.step = self.micro = 0  # where the loop is (a step function may seed by it)
        self.log: MetricsLogger | None = None
        self.state: dict[str, Any] = {}  # a method's own resumable state (e.g. a KL controller)

    @property
    def device(self) -> torch.device:
        return self.strategy.device

    @property
    def dtype(self) -> torch.dtype:
        return self.strategy.dtype

    def plan(
        self,
        n_examples: int,
        lengths: list[int] | None = None,
        group: int = 0,
        per_rank: int | None = None,
        steps: int = 0,
    ) -> ExampleOrder:
        """The data order over ``n_examples`` (a function of seed and step, so resume replays it;
        ``lengths``/``group``: length grouping) and the number of steps.

        By default a step is an optimizer step of ``micro_batch_size × grad_accum`` examples per
        rank, and ``max_steps`` (else ``epochs``) sets their number. ``per_rank`` makes a step
        take that many examples per rank in one piece (RL: one iteration's prompts), and
        ``steps`` (else ``epochs``) sets their number.
        """
        c = self.cfg.strategy
        self.n_examples = n_examples
        micro, accum = (per_rank, 1) if per_rank else (c.micro_batch_size, c.grad_accum)
        self.order = ExampleOrder(
            n_examples, self.cfg.seed, micro, accum, self.strategy.world_size, lengths=lengths, group=group
        )
        fixed = steps if per_rank else self.cfg.max_steps
        self.total_steps = fixed or max(1, int(self.cfg.epochs * n_examples / self.order.global_batch))
        return self.order

    def optimizer(
        self, param_groups: list[dict[str, Any]], schedule_steps: int | None = None
    ) -> tuple[Any, Any]:
        """AdamW over ``param_groups`` and its warmup + decay schedule over ``schedule_steps``
        optimizer steps (default: the planned steps; RL makes several per iteration)."""
        o = self.cfg.optim
        optimizer = self.strategy.make_optimizer(param_groups, o.betas, o.eps)
        steps = schedule_steps or self.total_steps
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o, steps))

    @property
    def run_shape(self) -> dict[str, int]:
        """What a checkpoint's data position means; resuming needs the same."""
        assert self.order is not None, "plan() first"
        return {
            "global_batch": self.order.global_batch,
            "world_size": self.strategy.world_size,
            "n_examples": self.n_examples,
        }

    def begin(self, notes: Sequence[str] = ()) -> int | None:
        """Resume if asked (refused with the keys named when the config changed), write
        ``config.yaml``, open the logger; returns the start step, or None after printing why a
        resume was refused (the trainer exits 2)."""
        try:
            self.start_step = begin_run(self.strategy, self.cfg, self.out, self.run_shape)
        except ConfigError as exc:  # resuming with a changed config: the message names the keys
            print(f"error: {exc}", file=sys.stderr)
            return None
        # (drops metric records after start_step: a resumed run redoes them)
        if self.start_step and self.strategy.loaded_state is not None:
            self.state = dict(self.strategy.loaded_state.get("run_state") or {})
        self.log = MetricsLogger(self.out, self.total_steps, self.start_step, enabled=self.strategy.is_main)
        for note in notes:
            self.write(note)
        self.write(self.strategy.describe())
        self.write(
            f"{self.n_examples} examples, {self.total_steps} steps of {self.order.global_batch} "
            f"(world {self.strategy.world_size}), start at step {self.start_step}"
        )
        return self.start_step

    def write(self, text: str) -> None:
        assert self.log is not None
        self.log.write(f"[{self.name}] {text}")

    def save(self, step: int) -> None:
        """A resumable checkpoint of every trainable engine at ``step``; older ones pruned."""
        client = {"step": step, **self.run_shape, "run_state": dict(self.state)}
        self.strategy.save_checkpoint(self.ckpt_dir, step_tag(step), client)
        if self.strategy.is_main:
            prune_checkpoints(self.ckpt_dir, self.cfg.keep_last)

    def usage(self) -> dict[str, float]:
        """The run's cost so far, over all ranks (a collective: every rank calls it):
        ``memory/peak_gib`` (the largest rank's peak, GiB: resident set on CPU, allocated memory
        on GPU), ``memory/peak_above_start_gib`` (the same above what the process held before any
        model was loaded: interpreter, libraries, process group) and ``cpu_s`` (CPU seconds of
        all ranks since their processes started)."""
        usage = process_usage(self.strategy.device.type)
        above = usage["peak_gib"] - self._start_usage["peak_gib"]
        return {
            "memory/peak_gib": self.strategy.all_reduce_max(usage["peak_gib"]),
            "memory/peak_above_start_gib": self.strategy.all_reduce_max(above),
            "cpu_s": self.strategy.all_reduce_sum(usage["cpu_s"]),
        }

    def train(self, step_fn: StepFn, engine: Any = None) -> None:
        """The loop from :attr:`start_step`: per optimizer step, ``grad_accum`` micro-batches of
        ``step_fn`` → backward → step; metrics averaged over micro-batches and ranks every
        ``log_every`` steps, with the cost so far (:meth:`usage`: peak memory, CPU seconds), as
        the RL loop logs it; a checkpoint every ``save_every`` steps."""
        s, cfg, accum = self.strategy, self.cfg, self.cfg.strategy.grad_accum
        (engine or s.engine).train()
        tokens, t_last = 0, time.time()
        for step in range(self.start_step, self.total_steps):
            sums: dict[str, float] = {}
            step_lr, t_step = s.current_lrs(engine)[0], time.time()
            for micro in range(accum):
                self.step, self.micro = step, micro
                loss, metrics = step_fn(self.order.micro_batch(step, micro, s.rank))
                s.backward(loss, engine)
                s.step(engine)
                tokens += int(metrics.pop("tokens", 0))
                for k, v in {"loss": loss.item(), **metrics}.items():
                    sums[k] = sums.get(k, 0.0) + v / accum
            done = step + 1
            if done % cfg.log_every == 0 or done == self.total_steps:
                record = {k: s.all_reduce_mean(v) for k, v in sums.items()}
                elapsed = time.time() - t_last
                record.update(lr=step_lr, grad_norm=s.grad_norm(engine), step_s=time.time() - t_step)
                total = s.all_reduce_sum(tokens)  # every rank joins the collective, whatever it counted
                if total:
                    record["tok/s"] = total / max(elapsed, 1e-9)
                record.update(self.usage())  # every rank joins its collectives
                record["epoch"] = self.order.epoch_of(done)
                self.log.log(done, record)
                tokens, t_last = 0, time.time()
            if cfg.save_every and done % cfg.save_every == 0 and done < self.total_steps:
                self.save(done)

    def iterate(self, iteration_fn: Callable[[int, list[int]], dict[str, float]]) -> None:
        """The loop of methods whose unit is a whole iteration (RL: a rollout, then several
        optimizer steps the method makes itself), from :attr:`start_step` to :attr:`total_steps`.

        ``iteration_fn(iteration, indices)`` gets this rank's example indices of the iteration
        (``order.micro_batch(iteration, 0, rank)``) and returns its metrics, already averaged over
        the ranks; they are logged every ``log_every`` iterations with the cost so far
        (:meth:`usage`, measured every iteration) and a checkpoint (with :attr:`state`) is saved
        every ``save_every`` iterations.
        """
        assert self.order is not None and self.log is not None, "plan() and begin() first"
        cfg, rank = self.cfg, self.strategy.rank
        for iteration in range(self.start_step, self.total_steps):
            self.step, self.micro = iteration, 0
            record = iteration_fn(iteration, self.order.micro_batch(iteration, 0, rank))
            record.update(self.usage())  # every rank joins its collectives
            done = iteration + 1
            if done % cfg.log_every == 0 or done == self.total_steps:
                record["epoch"] = self.order.epoch_of(done)
                self.log.log(done, record)
            if cfg.save_every and done % cfg.save_every == 0 and done < self.total_steps:
                self.save(done)

    def finish(
        self, model: LMM, grow_llm_layers: int = 0, exclude: Callable[[str], bool] | None = None
    ) -> dict[str, str]:
        """Final checkpoint (for resume/continuation) and the consolidated export of ``model`` (the
        trained LMM: ``final/``, ``final_adapter/`` for LoRA, ``final_llava_hf/`` on request;
        ``exclude``: trained tensors left out by name)."""
        self.save(self.total_steps)
        model.always_run_media = False
        c = self.cfg
        written = export_final(
            self.strategy, model, c.model, c.lora, self.out, c.export_lora, c.export_llava_hf,
            grow_llm_layers, exclude,
        )  # fmt: skip
        return written

    def close(self, written: dict[str, str], leave_process_group: bool = True) -> None:
        """Report what the run wrote, close the logs and (every rank, unless the caller runs more
        collectives afterwards, as i-SRT's iterations do) leave the process group."""
        self.write(f"done: {json.dumps(written)}")
        self.log.close()
        if leave_process_group:
            self.strategy.shutdown()


def exit_after_run(code: int | None = 0) -> NoReturn:
    """End a training script's process once ``main`` returned: the ``atexit`` handlers, then
    ``logging.shutdown`` and flushed stdio, then ``os._exit(code)`` — no interpreter finalization.

    Why: after the last collective, a gloo worker thread of a process group that DeepSpeed still
    references may be the one to drop a finished work item (a barrier holding an all-gather and its
    tensors); freeing a tensor's Python object needs the GIL, and once the main thread is in
    ``Py_FinalizeEx`` CPython exits that thread instead, whose unwinding crosses a ``noexcept``
    destructor: ``std::terminate`` — SIGABRT, "terminate called without an active exception", exit
    -6 after a finished, fully written run. Seen once in 60 two-rank ZeRO-3 DPO launches (core dump:
    ``c10d::ProcessGroupGloo::runLoop`` → ``~AsyncBarrierWork`` → ``~AsyncAllgatherWork`` →
    ``decref_pyobject`` → ``take_gil`` → ``pthread_exit``, main thread in ``Py_FinalizeEx``);
    pytorch/pytorch#179291 describes the same race. ``Strategy.shutdown`` (barrier +
    ``destroy_process_group``) does not prevent it: the groups' C++ objects live on while DeepSpeed
    holds them.

    Call it only from a script's ``if __name__ == "__main__":``; an exception in ``main`` still
    ends the process the normal way, with its traceback.

    Args:
        code: ``main``'s return value (``None`` → 0).
    """
    import atexit
    import logging
    import os

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: nothing left to keep
            pass
    os._exit(int(code or 0))
