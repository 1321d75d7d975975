"""Typed config of ``train/isrt.py`` (``configs/isrt/``): the DPO run config plus the loop's knobs.

The paper's judge wording, sampling temperature and β are not public; the defaults below are our
choices (see ``train/isrt.py``'s docstring) and each is a knob.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmalign.preference.config import DPOConfig

ContextMode = Literal["none", "fresh", "retrospective"]
JudgeKind = Literal["self", "llm", "oracle"]

DESCRIBE_PROMPT = "Describe the video in detail."
REVISE_PROMPT = (
    "Here is your previous description of this video:\n{previous}\n"
    "Watch the video again, then correct and complete it. Give the full corrected description."
)
JUDGE_PROMPT = (
    "{context_block}Question: {question}\n"
    "Answer A: {answer_a}\n"
    "Answer B: {answer_b}\n"
    "Which answer is more accurate and better grounded in the video? Reply with one letter, A or B."
)
CONTEXT_BLOCK = "Description of the video: {context}\n"


@dataclass
class PoolConfig:
    """The prompt pool: (video, question) records.

    Attributes:
        path: a JSON/JSONL file of ``{id, video, question, truth?}`` records (``truth``: a
            ShapeWorld QA item, what the exact oracle judges), or None to read ShapeWorld's
            ``qa/<split>.jsonl`` video items from ``shapeworld``.
        shapeworld: a generated ShapeWorld dataset folder (``python -m mmalign.shapeworld``).
        split: its split for the pool.
        media_root: folder the ``video`` paths are relative to (default: the pool file's folder
            or the ShapeWorld folder).
        per_iteration: prompts drawn per iteration (a deterministic function of seed and
            iteration; 0 = the whole pool every iteration).
        max_records: keep at most this many records of the file (in order; 0 = all).
    """

    path: str | None = None
    shapeworld: str | None = None
    split: str = "train"
    media_root: str | None = None
    per_iteration: int = 0
    max_records: int = 0

    def __post_init__(self) -> None:
        if (self.path is None) == (self.shapeworld is None):
            raise ValueError("pool: give exactly one of path or shapeworld")
        if self.per_iteration < 0 or self.max_records < 0:
            raise ValueError("pool.per_iteration and pool.max_records must be ≥ 0")


@dataclass
class EvalConfig:
    """Stage 6: video QA of π_{t+1} (exact judge on ShapeWorld truth).

    Attributes:
        path / shapeworld / split / media_root / max_records: the records, as :class:`PoolConfig`
            reads them (``shapeworld`` + ``split`` for the exact judge); none: no evaluation.
        max_new_tokens: answer length (greedy).
        judge_base_url / judge_model: the OpenAI-compatible judge of records without a ShapeWorld
            truth (Video-ChatGPT's protocol, :mod:`mmalign.eval.video_qa`; else the environment's).
    """

    path: str | None = None
    shapeworld: str | None = None
    split: str = "test"
    media_root: str | None = None
    max_records: int = 100
    max_new_tokens: int = 32
    judge_base_url: str | None = None
    judge_model: str | None = None


@dataclass
class ISRTConfig(DPOConfig):
    """i-SRT: the DPO run fields (β, loss, SFT term, LoRA, optimizer, strategy) plus the loop.

    Attributes:
        iterations: iterations to run (each writes ``out/iter_{t}/``).
        pool: the (video, question) prompts.
        num_samples: K responses per prompt (≥ 2).
        temperature / top_p / max_new_tokens: sampling of the K responses.
        resample_tries: rounds of resampling for prompts whose K samples are identical (then
            they are dropped and counted).
        gather_for_generation: (decoding runs one prompt, K samples, per call, so that a
            record's samples depend on its id alone — what makes a resumed stage equal an
            uninterrupted one) under ZeRO-3, gather the weights once for decoding (they must fit
            on one device); off: layer-by-layer gathering with synced decoding.
        context: ``none`` (no description), ``fresh`` (c_t from the describe prompt each
            iteration) or ``retrospective`` (c_t revises c_{t−1}; c_0 from the describe prompt).
        context_max_new_tokens / context_temperature: decoding of c_t (temperature 0 = greedy).
        describe_prompt / revise_prompt (``{previous}``): the context prompts.
        judge: ``self`` (π_t with the video and c_t), ``llm`` (an OpenAI-compatible endpoint
            given c_t as text) or ``oracle`` (the exact ShapeWorld judge; needs ``truth``).
        judge_prompt: ``{context_block}``, ``{question}``, ``{answer_a}``, ``{answer_b}``.
        context_block: the judge prompt's context line (``{context}``), empty without context.
        tie_threshold: a |margin| (mean over both orders of log p(pref) − log p(other)) below it
            is a tie; order disagreement is always a tie. Ties are dropped and counted.
        judge_base_url / judge_model: the ``llm`` judge's endpoint (else the environment's).
        reference_model: ``previous`` (π_t, whose log-probs were computed while sampling — the
            paper's) or ``start`` (the start model scores each pair).
        eval: stage 6.
        plot: draw ``iterations.png``.
    """

    out: str = "runs/isrt"
    iterations: int = 1
    pool: PoolConfig = field(default_factory=lambda: PoolConfig(shapeworld="runs/shapeworld"))
    num_samples: int = 2
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    resample_tries: int = 2
    gather_for_generation: bool = False
    context: ContextMode = "retrospective"
    context_max_new_tokens: int = 96
    context_temperature: float = 0.0
    describe_prompt: str = DESCRIBE_PROMPT
    revise_prompt: str = REVISE_PROMPT
    judge: JudgeKind = "self"
    judge_prompt: str = JUDGE_PROMPT
    context_block: str = CONTEXT_BLOCK
    tie_threshold: float = 0.1
    judge_base_url: str | None = None
    judge_model: str | None = None
    reference_model: Literal["previous", "start"] = "previous"
    eval: EvalConfig = field(default_factory=EvalConfig)
    plot: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1 or self.num_samples < 2:
            raise ValueError("iterations must be ≥ 1 and num_samples ≥ 2")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")
        if self.context not in ("none", "fresh", "retrospective"):
            raise ValueError(f"context must be none, fresh or retrospective, got {self.context!r}")
        if self.judge not in ("self", "llm", "oracle"):
            raise ValueError(f"judge must be self, llm or oracle, got {self.judge!r}")
        if self.reference_model not in ("previous", "start"):
            raise ValueError(f"reference_model must be previous or start, got {self.reference_model!r}")
        if self.reference != "precomputed":
            raise ValueError(
                "i-SRT's DPO reads the reference log-probs stored with the pairs: reference: precomputed"
            )
        if self.lora.enabled and self.export_lora == "adapter":
            raise ValueError(
                "each iterate is loaded from final/: with LoRA, export_lora must be merged or both"
            )
        if self.povid.noise_weight > 0:
            raise ValueError("i-SRT trains plain DPO pairs (povid.noise_weight must be 0)")
        if "{previous}" not in self.revise_prompt:
            raise ValueError("revise_prompt needs a {previous} field")
        for key in ("{question}", "{answer_a}", "{answer_b}"):
            if key not in self.judge_prompt:
                raise ValueError(f"judge_prompt needs a {key} field")
        if self.tie_threshold < 0 or self.resample_tries < 0:
            raise ValueError("tie_threshold and resample_tries must be ≥ 0")
