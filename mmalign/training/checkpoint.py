"""Run checkpoints (DeepSpeed, for resume) and the final export (a plain mmalign directory).

Layout of a run folder::

    config.yaml                the resolved config of the run that ran last (written after the resume check)
    config_history.yaml        accepted config changes on resume (``resume_changed_config: true``)
    checkpoints/step_000100/   DeepSpeed shards + rng_rank*.pt + config.yaml   (resume=auto picks ``latest``)
    checkpoints/latest         written by rank 0 after a complete save
    final/                     consolidated mmalign checkpoint (merged weights for LoRA runs)
    final_adapter/             LoRA runs: PEFT adapter + media.safetensors (encoder, projector, mixer)
                               + mmalign_adapter.json (the base checkpoint it applies to)
    final_llava_hf/            optional llava-hf export
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from mmalign.config import ConfigError, save_config, to_dict
from mmalign.models.checkpoint import load_model, save_lmm
from mmalign.models.grow import grow_llm
from mmalign.models.lmm import LMM
from mmalign.training.parts import LoraConfig, apply_lora
from mmalign.training.strategy import Strategy


def step_tag(step: int) -> str:
    return f"step_{step:06d}"


def resolve_resume(resume: str, ckpt_dir: Path) -> tuple[Path, str | None] | None:
    """Where to resume from: ``auto`` → ``ckpt_dir`` if it has a ``latest``; ``none`` → nothing; else a folder."""
    if resume == "none":
        return None
    if resume == "auto":
        return (ckpt_dir, None) if (ckpt_dir / "latest").exists() else None
    path = Path(resume)
    if (path / "latest").exists():
        return path, None
    if path.is_dir() and (path.parent / "latest").exists():
        return path.parent, path.name
    raise FileNotFoundError(f"resume={resume}: no DeepSpeed checkpoint there")


def resume_step(
    strategy: Strategy,
    resume: str | tuple[Path, str | None] | None,
    ckpt_dir: Path,
    run_shape: dict[str, Any],
) -> int:
    """Restore the checkpoint ``resume`` names (see :func:`resolve_resume`); the step to start at.

    ``run_shape`` (global batch, world size, data size) must equal the one saved with the
    checkpoint: the data position is step × global batch, so it must mean the same thing.
    ``resume`` may also be an already resolved ``(directory, tag)`` (or None: nothing to resume).
    """
    resume_from = resolve_resume(resume, ckpt_dir) if isinstance(resume, str) else resume
    if resume_from is None:
        return 0
    state = strategy.load_checkpoint(*resume_from)
    saved = {k: state.get(k) for k in run_shape}
    if saved != run_shape:
        raise ValueError(
            f"cannot resume {resume_from[0]}: it was saved with {saved}, this run has {run_shape}"
        )
    return int(state["step"])


# Keys that may differ between a checkpoint's run and the run resuming it: they change neither the
# weights' trajectory nor the data order — where outputs go, how often to log/save/keep, what the
# final export holds.
RESUME_SAFE_KEYS = frozenset(
    {
        "out",
        "resume",
        "resume_changed_config",
        "save_every",
        "keep_last",
        "log_every",
        "export_lora",
        "export_llava_hf",
    }
)


# Keys that may change on resume without ``resume_changed_config`` because the new value is what
# runs (a run is extended or shortened; the schedule follows the new length from the restored
# step): the change is printed and recorded in ``config_history.yaml``. Everything else (optim.*,
# data, parts, lora, strategy, template, ...) is refused unless ``resume_changed_config: true``.
RESUME_LENGTH_KEYS = frozenset({"max_steps", "epochs"})


def flatten_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` → ``{"optim.lr": 1}`` (lists stay whole values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ (``(saved, current)``), :data:`RESUME_SAFE_KEYS` left out."""
    a, b = flatten_config(saved), flatten_config(current)
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if k not in RESUME_SAFE_KEYS and a.get(k) != b.get(k)
    }


def checkpoint_config(ckpt_dir: Path, tag: str | None) -> dict[str, Any] | None:
    """The config a checkpoint was saved with: ``<tag>/config.yaml``, else (checkpoints written
    before configs were stored with them) the run folder's ``config.yaml``; None if neither."""
    if tag is None and (ckpt_dir / "latest").exists():
        tag = (ckpt_dir / "latest").read_text().strip()
    for path in ([ckpt_dir / tag / "config.yaml"] if tag else []) + [ckpt_dir.parent / "config.yaml"]:
        if path.exists():
            return yaml.safe_load(path.read_text())
    return None


def begin_run(strategy: Strategy, cfg: Any, out: Path, run_shape: dict[str, Any]) -> int:
    """Resume if ``cfg.resume`` asks and the config allows it, then write ``out/config.yaml``.

    Every rank calls this after :meth:`Strategy.prepare`. A checkpoint saved with a different
    config (other than :data:`RESUME_SAFE_KEYS`, and :data:`RESUME_LENGTH_KEYS` whose new
    value simply applies) is refused, naming the keys, unless ``cfg.resume_changed_config``;
    then the new optimizer hyperparameters (base learning rates,
    weight decay, betas, eps) replace the restored ones, the schedule follows the new config
    from the restored step, and ``out/config_history.yaml`` records the change. ``config.yaml``
    is written only after that check, so it always holds the config that ran last; every later
    checkpoint stores it too (``<tag>/config.yaml``).

    Returns:
        The step to start at (0 for a fresh run).

    Raises:
        ConfigError: the config changed and ``resume_changed_config`` is false.
        ValueError: the run shape (global batch, world size, data size) changed.
    """
    current = to_dict(cfg)
    strategy.run_config = current
    resume_from = resolve_resume(cfg.resume, out / "checkpoints")
    changes: dict[str, tuple[Any, Any]] = {}
    start = 0
    if resume_from is not None:
        saved = checkpoint_config(*resume_from)
        changes = config_changes(saved, current) if saved is not None else {}
        refused = {k: v for k, v in changes.items() if k not in RESUME_LENGTH_KEYS}
        if refused and not cfg.resume_changed_config:
            listed = "; ".join(
                f"{k}: {old!r} → {new!r}" for k, old, new in ((k, *v) for k, v in refused.items())
            )
            raise ConfigError(
                f"cannot resume {resume_from[0]}: the config changed since that checkpoint was saved "
                f"({listed}). Resuming would mix the two (a restored optimizer keeps its saved "
                "learning rate). Run with the old values, set resume=none (and a new out) to start "
                "over, or resume_changed_config=true to continue with the new values."
            )
        hyper = strategy.optimizer_hyperparameters()
        start = resume_step(strategy, resume_from, out / "checkpoints", run_shape)
        strategy.set_optimizer_hyperparameters(hyper)  # this run's values, not the saved ones
    if strategy.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if changes:
            note = ", ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in changes.items())
            print(f"[resume] from step {start} with a changed config: {note}", flush=True)
            record = {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "resumed_at_step": start,
                "changed": {k: {"before": old, "after": new} for k, (old, new) in changes.items()},
            }
            with (out / "config_history.yaml").open("a") as f:
                f.write(yaml.safe_dump([record], sort_keys=False))
        save_config(cfg, out / "config.yaml")
    strategy.barrier()
    return start


def prune_checkpoints(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step folders (never the one ``latest`` names)."""
    latest = (ckpt_dir / "latest").read_text().strip() if (ckpt_dir / "latest").exists() else None
    tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
    for old in tags[:-keep_last]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def export_final(
    strategy: Strategy,
    model: LMM,
    base_path: str | Path,
    lora: LoraConfig,
    out_dir: Path,
    export_lora: str = "both",
    llava_hf: bool = False,
    grow_llm_layers: int = 0,
    exclude: Callable[[str], bool] | None = None,
) -> dict[str, str]:
    """Consolidate the trained weights and write loadable checkpoints (every rank must call).

    ``exclude`` leaves trained tensors out of the export by name (e.g. a PPO value adapter that
    shares the policy's LoRA model).

    Rank 0 rebuilds a plain (non-DeepSpeed) model from ``base_path`` (grown by ``grow_llm_layers``
    identity blocks, as the run grew it; in float32 for an fp32 run; with the run's chat template
    ``model.cfg.template``) with the same LoRA wrapping,
    loads the gathered trained weights into it (frozen ones are the start checkpoint's) and saves: ``final/`` (merged weights for LoRA runs; always
    written unless ``export_lora == "adapter"``), ``final_adapter/`` for LoRA runs, and
    ``final_llava_hf/`` on request.
    """
    state = strategy.trainable_state_dict(model)
    if state is not None and exclude is not None:
        state = {k: v for k, v in state.items() if not exclude(k)}
    written: dict[str, str] = {}
    if strategy.is_main:
        # An fp32 run exports fp32 whatever the base's dtype; a 16-bit run keeps the base's dtype
        # (its frozen weights are then the exact originals, not the engine's rounded copies).
        dtype = torch.float32 if strategy.cfg.precision == "fp32" else None
        plain, tokenizer = load_model(base_path, dtype=dtype, template=model.cfg.template)
        if grow_llm_layers:
            grow_llm(plain.llm, grow_llm_layers)
        if lora.enabled:
            apply_lora(plain, lora)
        # Frozen weights stay the start checkpoint's originals; trained ones are overwritten.
        _, unexpected = plain.load_state_dict(state, strict=False)
        if unexpected:
            raise RuntimeError(f"export: trained tensors the start model does not have: {unexpected[:5]}")
        plain.always_run_media = False
        if lora.enabled:
            if export_lora in ("adapter", "both"):
                written["adapter"] = str(save_adapter(plain, base_path, out_dir / "final_adapter"))
            plain.llm = plain.llm.merge_and_unload()
        if not lora.enabled or export_lora in ("merged", "both"):
            written["final"] = str(save_lmm(plain, tokenizer, out_dir / "final"))
        if llava_hf:
            from mmalign.models.llava_hf import export_llava_hf

            written["llava_hf"] = str(export_llava_hf(plain, tokenizer, out_dir / "final_llava_hf"))
    strategy.barrier()
    return written


def save_adapter(model: LMM, base_path: str | Path, directory: Path) -> Path:
    """Write a LoRA run as an adapter folder: the PEFT adapter of the LLM, the encoder(s), projector
    and temporal-mixer weights (``media.safetensors``; they may have trained too) and ``mmalign_adapter.json`` naming
    the base checkpoint (and the run's chat template, when it overrode the base's)."""
    directory.mkdir(parents=True, exist_ok=True)
    model.llm.save_pretrained(directory)
    media = {f"vision.{k}": v for k, v in model.vision.state_dict().items()}
    if getattr(model, "video_vision", None) is not None:  # Video-LLaVA's video tower (train_vision)
        media.update({f"video_vision.{k}": v for k, v in model.video_vision.state_dict().items()})
    media.update({f"projector.{k}": v for k, v in model.projector.state_dict().items()})
    if model.temporal is not None:  # trains with the projector
        media.update({f"temporal.{k}": v for k, v in model.temporal.state_dict().items()})
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in media.items()}, str(directory / "media.safetensors")
    )
    (directory / "mmalign_adapter.json").write_text(
        json.dumps({"base": str(Path(base_path).resolve()), "template": model.cfg.template}, indent=2)
    )
    return directory


def load_with_adapter(adapter_path: str | Path, base_path: str | Path | None = None) -> tuple[LMM, Any]:
    """Load a base checkpoint, apply a saved adapter folder (:func:`save_adapter`) to it.

    Args:
        adapter_path: the adapter folder.
        base_path: the base checkpoint (default: the one recorded in the adapter folder).
    """
    from peft import PeftModel

    adapter_path = Path(adapter_path)
    meta_file = adapter_path / "mmalign_adapter.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if base_path is None:
        if "base" not in meta:
            raise FileNotFoundError(f"{adapter_path} names no base checkpoint; pass base_path")
        base_path = meta["base"]
    model, tokenizer = load_model(base_path, template=meta.get("template"))
    model.llm = PeftModel.from_pretrained(model.llm, str(adapter_path))
    media_file = adapter_path / "media.safetensors"
    if media_file.exists():
        missing, unexpected = model.load_state_dict(load_file(str(media_file)), strict=False)
        if unexpected:
            raise ValueError(f"{media_file}: unexpected keys {unexpected[:5]}")
    model.eval()
    return model, tokenizer
