"""Verifiable rewards from Python functions: load ``module:function``, call it safely, ShapeWorld's judge.

The call convention of a reward function (what users write for math, OCR, counting …)::

    def my_reward(records: list[dict], responses: list[str]) -> list[float]: ...

- ``responses[s]`` is the decoded text of response ``s`` (special tokens stripped).
- ``records[s]`` is the record of the prompt that response ``s`` answers — one record per response,
  so with K responses per prompt a prompt's record appears K times (the same dict object; do not
  mutate it). A record is a JSON-like dict: the prompt record's own fields — ``id``, facts such as
  ``captions`` (list of strings) and ``answer``, extra fields such as ``task`` or ``scene_id`` — and
  its media as path *strings* resolved against the media root: ``images`` and ``videos`` (lists,
  possibly empty). The function may read the media files; it never gets tensors.
- It returns one finite number per response (``int``, ``float``, ``bool``, a NumPy scalar; or a 1-D
  tensor/array of that length). Higher is better; the scale is the function's own (combine several
  functions with weights in the trainer).

:func:`load_reward_fn` resolves ``"package.module:function"`` or ``"path/to/file.py:function"``;
:func:`call_reward_fn` calls a function on a batch and validates what comes back (a clear error
naming the function and the record, or a reported skip); :func:`shapeworld_judge` is the built-in
exact ShapeWorld judge in this convention (``"mmalign.rl.reward_fns:shapeworld_judge"``).

Verifiable rewards in RL for language models: Lambert et al. 2024 (Tülu 3, RLVR),
https://arxiv.org/abs/2411.15124; DeepSeekMath's rule-based rewards, https://arxiv.org/abs/2402.03300.
TRL's ``GRPOTrainer`` takes Python reward functions too (``reward_funcs``, called with
``prompts, completions, **columns``); here the whole record is passed instead of its columns.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from mmalign.shapeworld.judges import CHECKERS, qa_correct
from mmalign.shapeworld.parsing import parse_mentions
from mmalign.shapeworld.world import Scene

RewardFn = Callable[[list[dict], list[str]], Sequence[float]]
OnError = Literal["error", "skip"]
_FLOAT32_MAX = torch.finfo(torch.float32).max


# ------------------------------------------------------------------------------------ loading


def _load_file_module(path: Path, spec: str) -> Any:
    if not path.is_file():
        raise ValueError(f"reward function {spec!r}: no such file {str(path)!r}")
    resolved = path.resolve()
    # A unique module name per file, registered in sys.modules (dataclasses and pickling need it).
    name = f"mmalign_reward_fn_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"reward function {spec!r}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ValueError(f"reward function {spec!r}: importing {str(path)!r} failed: {exc!r}") from exc
    return module


def load_reward_fn(spec: str) -> RewardFn:
    """The callable named by ``spec``: ``"package.module:function"`` or ``"path/to/file.py:function"``.

    The part before the last ``:`` is a file when it ends in ``.py`` or contains a path separator
    (relative paths are taken from the working directory), an importable module otherwise. The part
    after it may be dotted (``"module:Class.method"``). A file is imported once per process under a
    name derived from its absolute path.

    Args:
        spec: the reference, e.g. ``"mmalign.rl.reward_fns:shapeworld_judge"`` or
            ``"rewards/count.py:count_reward"``.

    Returns:
        The callable (see the module docstring for its call convention; not checked here).

    Raises:
        ValueError: naming ``spec``, when it has no ``:``, the module or file cannot be imported (the
            import error is chained), the attribute is missing, or it is not callable.
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise ValueError(
            f"reward function {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'"
        )
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        module = _load_file_module(Path(module_part), spec)
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as exc:  # ImportError, or any error the module raises on import
            raise ValueError(
                f"reward function {spec!r}: cannot import module {module_part!r}: {exc!r}"
            ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward function {spec!r}: {module_part!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward function {spec!r}: {attr!r} is a {type(obj).__name__}, not callable")
    return obj


# ------------------------------------------------------------------------------------ calling


def _record_id(records: Sequence[Mapping[str, Any]], i: int) -> str:
    rec = records[i]
    return str(rec.get("id", f"#{i}")) if isinstance(rec, Mapping) else f"#{i}"


def _items(out: Any, n: int) -> tuple[list[Any], str | None]:
    """``(items, None)`` for a sequence of ``n`` items, or ``([], reason)`` when the whole output is wrong."""
    if hasattr(out, "tolist") and hasattr(out, "ndim"):  # a tensor or NumPy array
        if out.ndim != 1:
            return [], f"returned an array of shape {tuple(out.shape)}, not 1-D"
        out = out.tolist()
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
        return [], f"returned a {type(out).__name__}, not a list of numbers"
    if len(out) != n:
        return [], f"returned {len(out)} values for {n} responses"
    return list(out), None


def _check_item(value: Any) -> tuple[float | None, str | None]:
    """``(float, None)`` for a finite real number, else ``(None, reason)``."""
    if not isinstance(value, numbers.Real):
        return None, f"returned {value!r} of type {type(value).__name__}, not a number"
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not math.isfinite(number):
        return None, f"returned {value!r}, not a finite number"
    if abs(number) > _FLOAT32_MAX:
        return None, f"returned {value!r}, beyond float32's range"
    return number, None


def call_reward_fn(
    fn: RewardFn,
    name: str,
    records: Sequence[dict],
    responses: Sequence[str],
    on_error: OnError = "error",
) -> tuple[torch.Tensor, list[int]]:
    """Call a reward function on a batch and validate its output.

    A response is *bad* when its value is not a real number (``None``, a string …), is NaN/±inf,
    or lies beyond float32's range.
    When the whole call fails — it raises, returns something that is not a list, or returns the
    wrong number of values — the function is called again on each (record, response) alone, to find
    the responses it fails on (the others keep the values of those single calls).

    Args:
        fn: the reward function (module docstring: ``fn(records, responses) -> list[float]``).
        name: its name for messages, e.g. the config's ``module:function`` spec.
        records: ``S`` prompt records, one per response.
        responses: ``S`` response texts.
        on_error: ``"error"``: a bad response raises. ``"skip"``: a bad response gets reward 0.0
            and its index is returned (the trainer masks it out of the loss and counts it).

    Returns:
        ``(rewards, skipped)``: float32 ``(S,)`` rewards on the CPU and the sorted indices of the
        skipped responses (empty with ``on_error="error"``).

    Raises:
        ValueError: ``records`` and ``responses`` differ in length or ``on_error`` is unknown; with
            ``on_error="error"``, the first bad response, naming ``name``, its record's ``id`` (or
            ``#index`` without one), its index and what was wrong (an exception is chained).
    """
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    if len(records) != len(responses):
        raise ValueError(f"reward function {name!r}: {len(records)} records for {len(responses)} responses")
    n = len(responses)
    if n == 0:
        return torch.zeros(0, dtype=torch.float32), []
    values: list[float | None] = [None] * n
    reasons: dict[int, str] = {}
    causes: dict[int, BaseException] = {}
    try:
        items, problem = _items(fn(list(records), list(responses)), n)
    except Exception as exc:  # the user's code: any exception is the function's failure
        items, problem = [], f"raised {exc!r}"
    if problem is None:
        for i, item in enumerate(items):
            values[i], reason = _check_item(item)
            if reason is not None:
                reasons[i] = reason
    else:  # the batch failed as a whole: find the responses it fails on, one at a time
        problem_note = (
            f"; found calling it on each response alone, after the call on the whole batch {problem}"
        )
        for i in range(n):
            try:
                single, reason = _items(fn([records[i]], [responses[i]]), 1)
            except Exception as exc:
                single, reason = [], f"raised {exc!r}"
                causes[i] = exc
            if reason is None:
                values[i], reason = _check_item(single[0])
            if reason is not None:
                reasons[i] = reason + problem_note
    if reasons and on_error == "error":
        i = min(reasons)
        message = (
            f"reward function {name!r} failed on record {_record_id(records, i)!r} (response {i} of {n}): "
            f"{reasons[i]}"
        )
        raise ValueError(message) from causes.get(i)
    rewards = torch.tensor([0.0 if v is None else v for v in values], dtype=torch.float32)
    return rewards, sorted(reasons)


# ------------------------------------------------------------------------------- ShapeWorld


def _present_shapes(record: Mapping[str, Any]) -> set[str]:
    scene = record.get("scene")
    if scene is not None:
        return (scene if isinstance(scene, Scene) else Scene.from_dict(scene)).shapes()
    captions = record.get("captions")
    if captions:
        return {m.shape for caption in captions for m in parse_mentions(caption)}
    raise ValueError(
        f"shapeworld_judge: caption record {record.get('id')!r} has neither 'scene' nor 'captions'"
    )


def caption_reward(present: set[str], response: str) -> float:
    """``clip((recalled − hallucinated) / max(n_true, 1), −1, 1)`` for one caption.

    Args:
        present: the distinct shapes in the image (``n_true = len(present)``).
        response: the caption.

    Returns:
        ``recalled`` = distinct true shapes the caption mentions, ``hallucinated`` = mentions of
        absent shapes (every occurrence counts, as in CHAIR-i; negated mentions such as "no star"
        are not mentions — :func:`mmalign.shapeworld.parsing.parse_mentions`). So 1.0 = every true
        shape named and nothing invented; each invented mention costs as much as one missed shape;
        an empty scene gives 0.0 for a clean caption and −1.0 for any invented shape.
    """
    mentions = parse_mentions(response)
    recalled = len(present & {m.shape for m in mentions})
    hallucinated = sum(m.shape not in present for m in mentions)
    return min(1.0, max(-1.0, (recalled - hallucinated) / max(len(present), 1)))


def shapeworld_judge(records: list[dict], responses: list[str]) -> list[float]:
    """The exact ShapeWorld judge as a reward function (module docstring's convention).

    By ``record["task"]`` (as :func:`mmalign.shapeworld.rlhf.rl_prompts` writes the PPO prompts):

    - ``"caption"``: :func:`caption_reward` in [−1, 1], against the true shapes of the record's
      ``scene`` (a scene-graph dict, ``Scene.to_dict()``, or a :class:`Scene`) when it has one, else
      the shapes named in its ``captions`` — which must then be *exact* captions (``rl_prompts``
      writes the exact detailed caption, which names every object and nothing else; a noisy
      training caption would make its invented partner count as true).
    - a QA type of :data:`mmalign.shapeworld.judges.CHECKERS` (``"existence"``, ``"count"``,
      ``"color"`` …) with the true ``answer``: 1.0 if :func:`~mmalign.shapeworld.judges.qa_correct`
      accepts the response, else 0.0. For ``"existence"``: the yes/no read by the strict parser
      matches the answer; an answer that is neither yes nor no scores 0.0.

    Raises:
        ValueError: naming the record id, for an unknown or missing ``task``, a QA record without an
            ``answer``, or a caption record with neither ``scene`` nor ``captions``.
    """
    if len(records) != len(responses):
        raise ValueError(f"shapeworld_judge: {len(records)} records for {len(responses)} responses")
    out = []
    for record, response in zip(records, responses, strict=True):
        task = record.get("task")
        if task == "caption":
            out.append(caption_reward(_present_shapes(record), response))
        elif task in CHECKERS:
            if record.get("answer") is None:
                raise ValueError(f"shapeworld_judge: {task} record {record.get('id')!r} has no 'answer'")
            out.append(float(qa_correct({**record, "type": task}, response)))
        else:
            raise ValueError(
                f"shapeworld_judge: record {record.get('id')!r} has task {task!r}; expected 'caption' or "
                f"one of {sorted(CHECKERS)}"
            )
    return out
