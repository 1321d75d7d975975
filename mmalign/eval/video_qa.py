"""Video QA (MSVD-QA, MSRVTT-QA, TGIF-QA, … as evaluated by Video-ChatGPT and i-SRT).

Records (JSON list or JSONL): ``{id | question_id, video | video_name, question, answer}`` (and
``caption`` for the ``hound`` judge); videos from a local folder: a video file (decord) or a folder
of extracted frames (LLaVA-Hound's release; :func:`mmalign.data.media.load_video_frames`), with
the model's frame sampling.

Judges (``mode``; the judge model's name is stored in the summary and in every per-item result):

- **``videochatgpt``** (Video-ChatGPT's protocol, https://arxiv.org/abs/2306.05424): the judge
  compares the predicted answer with the correct one and replies with a Python dict
  ``{'pred': 'yes'|'no', 'score': N}``; we report accuracy (share of ``yes``) and the mean score.
  The released evaluation prompt asks for an integer 0–5 (the i-SRT paper reports 1–5 scale
  numbers from the same script); we accept 0–5.
- **``hound``** (LLaVA-Hound's caption-grounded protocol, https://arxiv.org/abs/2404.01258, which
  i-SRT reports, https://arxiv.org/abs/2406.11280; facts from ``test/eval/eval_qa.py`` and
  ``inference/utils.py`` of github.com/RifleZhang/LLaVA-Hound-DPO): one user message, no system
  prompt, gives the judge the reference video caption, the question, the reference answer and the
  prediction, asks it to weigh relevance, accuracy, clarity and completeness, and to end with
  ``Explanation: …`` and ``Score: N`` (an integer 1–5). Accuracy is the share of scores ≥ 3, and
  the mean score is reported. Predictions are cut to their first 256 words, as Hound does. The
  prompt prose is ours; the inputs, criteria, scale and output format are Hound's. Departure:
  Hound reads a reply without ``Score: N`` by a majority vote over every number in it; we count
  it as unparsed (``n_unparsed``), as we do a score outside 1–5 or over a scale other than 5.
- **exact** (no LLM judge) on ShapeWorld videos: :func:`mmalign.shapeworld.judges.qa_correct`
  per item; ``pred`` = correct, ``score`` = 5 if correct else 0, plus accuracy per question type.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from mmalign.data.formats import RecordError
from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.common import GenerationOptions, answer, mean, question, read_records
from mmalign.llm.client import ChatClient
from mmalign.models.lmm import LMM
from mmalign.shapeworld.judges import qa_correct

SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and "
    "determine if they match meaningfully. Here's how you can accomplish the task:\n"
    "##INSTRUCTIONS:\n"
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
USER = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\nCorrect Answer: {answer}\nPredicted Answer: {pred}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, "
    "with 5 indicating the highest meaningful match. Please generate the response in the form of a Python "
    "dictionary string with keys 'pred' and 'score', where value of 'pred' is a string of 'yes' or 'no' and "
    "value of 'score' is in INTEGER, not STRING. DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only "
    "provide the Python dictionary string. For example, your response should look like this: "
    "{{'pred': 'yes', 'score': 4}}."
)


JudgeMode = Literal["videochatgpt", "hound"]
JUDGE_MODES: tuple[str, ...] = ("videochatgpt", "hound")
SCORE_RANGE = {"videochatgpt": "0-5", "hound": "1-5", "exact": "0-5"}

HOUND_PROMPT = (
    "You are grading a model's answer to a question about a video. You cannot see the video; a "
    "reference caption describes it.\n\n"
    "Reference caption of the video: {caption}\n"
    "Question about the video: {question}\n"
    "Reference answer: {answer}\n"
    "Model's answer: {prediction}\n\n"
    "Judge the model's answer against the reference answer, using the caption and the question as "
    "context, on four criteria:\n"
    "- Relevance: does it answer the question that was asked, in view of what the caption says?\n"
    "- Accuracy: does it agree with the reference answer, without adding facts that are wrong?\n"
    "- Clarity: is it clear, without repetition, vague wording or grammar errors that obscure it?\n"
    "- Completeness: does it cover what the reference answer covers, leaving nothing essential out?\n\n"
    "Reply in exactly this format:\n"
    "Explanation: <brief judgement of prediction>\n"
    "Score: <an integer score of quality from 1-5>"
)
HOUND_MAX_WORDS = 256  # Hound's eval_qa.py keeps the prediction's first 256 words


def truncate_words(text: str, max_words: int = HOUND_MAX_WORDS) -> str:
    """The first ``max_words`` whitespace-separated words (text unchanged when shorter)."""
    words = text.split()
    return " ".join(words[:max_words]) if len(words) > max_words else text


def judge_messages(
    record: dict[str, Any], prediction: str, mode: JudgeMode = "videochatgpt"
) -> list[dict[str, str]]:
    """The judge's messages for one record: Video-ChatGPT's system + user, or Hound's one user turn.

    Raises:
        RecordError: ``hound`` mode and the record has no ``caption`` (naming file:line and id).
    """
    if mode == "hound":
        require_captions([record])
        user = HOUND_PROMPT.format(
            caption=record["caption"],
            question=record["question"],
            answer=record["answer"],
            prediction=truncate_words(prediction),
        )
        return [{"role": "user", "content": user}]
    if mode != "videochatgpt":
        raise ValueError(f"video QA judge mode must be one of {JUDGE_MODES}, got {mode!r}")
    user = USER.format(question=record["question"], answer=record["answer"], pred=prediction)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_SCORE = re.compile(
    r"\bscore\W{0,3}?\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE
)


def parse_hound_score(text: str) -> dict[str, Any]:
    """``{"score": N, "pred": N >= 3, "explanation": str}`` from a Hound-style judge reply.

    Reads the last ``Score: N`` (any case, optional markdown ``**``, ``=`` for ``:``, a trailing
    ``/5`` or full stop): ``"Score: 4"``, ``"score:5."``, ``"**Score:** 3/5"``. ``N`` may be a
    decimal (Hound's own pattern takes one); an integral value comes back as ``int``.

    Raises:
        ValueError: no ``Score: N``, ``N`` outside 1–5, or a scale other than ``/5`` — the
            item then counts as unparsed, never as a silent 0.
    """
    found = list(_SCORE.finditer(text))
    if not found:
        raise ValueError("no 'Score: N' in the reply")
    m = found[-1]
    value = float(m.group(1))
    if m.group(2) is not None and float(m.group(2)) != 5:
        raise ValueError(f"score {m.group(0)!r} is not on the 1-5 scale")
    if not 1 <= value <= 5:
        raise ValueError(f"score {value:g} is outside 1-5")
    score: int | float = int(value) if value.is_integer() else value
    expl = re.search(
        r"explanation\W{0,3}?\s*:\s*(.*?)(?=\n\W*score\W{0,3}?\s*[:=]|\Z)", text, re.IGNORECASE | re.DOTALL
    )
    return {"pred": score >= 3, "score": score, "explanation": expl.group(1).strip() if expl else ""}


def require_captions(records: list[dict[str, Any]]) -> None:
    """Every record has a non-empty string ``caption`` (the ``hound`` judge reads it).

    Raises:
        RecordError: the first record without one, naming its file:line and id.
    """
    for r in records:
        cap = r.get("caption")
        if not isinstance(cap, str) or not cap.strip():
            where = r.get("_where", "in code")
            raise RecordError(
                f"{where} (id {r.get('id', '?')}): the hound video QA judge needs the reference video "
                f"'caption' (has {sorted(k for k in r if not k.startswith('_'))})"
            )


def parse_judgement(text: str) -> dict[str, Any]:
    """``{"pred": bool, "score": int}`` from the judge's dict string.

    Raises:
        ValueError: no dict with a yes/no ``pred`` and an integer ``score`` in 0–5.
    """
    m = re.search(r"\{.*?\}", text, re.DOTALL)
    if m is None:
        raise ValueError("no {...} dict in the reply")
    try:
        d = ast.literal_eval(m.group(0))
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"unreadable dict: {exc}") from exc
    if not isinstance(d, dict) or str(d.get("pred", "")).strip().lower() not in ("yes", "no"):
        raise ValueError("'pred' must be 'yes' or 'no'")
    score = d.get("score")
    if isinstance(score, str) and score.strip().isdigit():
        score = int(score)
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 5:
        raise ValueError(f"'score' must be an integer in 0-5, got {score!r}")
    return {"pred": str(d["pred"]).strip().lower() == "yes", "score": score}


def load_video_qa(
    path: str | Path, video_dir: str | Path, mode: JudgeMode | None = None, need_answer: bool = True
) -> list[dict[str, Any]]:
    """Video QA records with ``video_path`` resolved: a video file, or a folder of frames.

    A bare ``video_name`` that is neither a file nor a folder gets ``.mp4``. With ``mode="hound"``
    every record must carry a ``caption``. ``need_answer=False`` lets a caller that has another
    reference (i-SRT's exact ShapeWorld ``truth``) check answers itself.

    Raises:
        FileNotFoundError: no such video file or frame folder (naming file:line).
        RecordError: a record lacks a field, or a caption in ``hound`` mode (naming file:line and id).
    """
    required = ("video", "question", "answer") if need_answer else ("video", "question")
    records = read_records(path, required, aliases={"video_name": "video", "question_id": "id"})
    for i, r in enumerate(records):
        r.setdefault("id", str(i))
        name = str(r["video"])
        video = Path(video_dir) / name
        if not video.exists() and not Path(name).suffix:
            video = video.with_name(video.name + ".mp4")
        if not (video.is_file() or video.is_dir()):
            raise FileNotFoundError(f"{r['_where']}: media file not found: {video}")
        r["video_path"] = str(video)
    if mode == "hound":
        require_captions(records)
    return records


def shapeworld_records(data_dir: str | Path, split: str = "test", n: int = 100) -> list[dict[str, Any]]:
    """The video QA items of a ShapeWorld split (exact truth in ``truth``)."""
    from mmalign.eval.shapeworld import _read_jsonl

    root = Path(data_dir)
    items = [q for q in _read_jsonl(root / "qa" / f"{split}.jsonl") if "video" in q][:n]
    captions = {}  # the video captions of the split (what the hound judge reads)
    llava = root / "llava" / f"{split}.json"
    if llava.exists():
        captions = {
            r["scene_id"]: r["conversations"][-1]["value"]
            for r in json.loads(llava.read_text())
            if r.get("task") == "video_caption"
        }
    return [
        {
            "id": f"{q['scene_id']}-{k}",
            "video": q["video"],
            "video_path": str(root / q["video"]),
            "question": q["question"],
            "answer": str(q["answer"]),
            "truth": q,
            **({"caption": captions[q["scene_id"]]} if q["scene_id"] in captions else {}),
        }
        for k, q in enumerate(items)
    ]


def judge_answers(
    records: list[dict[str, Any]],
    answers: list[str],
    judge: ChatClient | None = None,
    mode: JudgeMode = "videochatgpt",
    progress: bool = False,
) -> dict[str, Any]:
    """Judge each answer (LLM judge in ``mode``, or exactly against ShapeWorld truth) and summarise.

    Args:
        records: video QA records (``question``, ``answer``; ``caption`` in ``hound`` mode;
            ``truth`` for the exact judge).
        answers: the model's answer per record.
        judge: the LLM judge; ``None`` judges exactly (every record needs ``truth``).
        mode: ``"videochatgpt"`` or ``"hound"`` (module docstring); ignored by the exact judge.

    Returns:
        ``accuracy`` (share judged correct among parsed replies), ``score`` (their mean),
        ``score_range``, ``n`` (parsed), ``n_unparsed``, ``per_type`` (exact judge), ``judge``
        (the judge model's name, or ``"exact"``), ``judge_mode`` and ``records``: per item its
        ``id``, question, answer, prediction, ``verdict`` (``None`` when unparsed), ``judge`` and
        ``judge_mode``.

    Raises:
        ValueError: an unknown mode, or records without truth and no LLM judge.
        RecordError: ``hound`` mode and a record without ``caption``.
    """
    if mode not in JUDGE_MODES:
        raise ValueError(f"video QA judge mode must be one of {JUDGE_MODES}, got {mode!r}")
    per_type: dict[str, list[bool]] = defaultdict(list)
    if judge is None:
        if any("truth" not in r for r in records):
            raise ValueError("video QA records without ShapeWorld truth need an LLM judge (--judge-model)")
        verdicts: list[dict | None] = []
        for r, a in zip(records, answers, strict=True):
            ok = qa_correct(r["truth"], a)
            per_type[r["truth"]["type"]].append(ok)
            verdicts.append({"pred": ok, "score": 5 if ok else 0})
        name, used = "exact", "exact"
    else:
        if mode == "hound":
            require_captions(records)
        convs = [judge_messages(r, a, mode) for r, a in zip(records, answers, strict=True)]
        parse = parse_hound_score if mode == "hound" else parse_judgement
        verdicts = judge.chat_many(
            convs, validate=parse, on_invalid="none", progress=progress, desc="video-qa-judge"
        )
        name, used = judge.config.model, mode
    done = [v for v in verdicts if v is not None]
    return {
        "accuracy": mean([float(v["pred"]) for v in done]),
        "score": mean([v["score"] for v in done]),
        "score_range": SCORE_RANGE[used],
        "n": len(done),
        "n_unparsed": len(verdicts) - len(done),
        "per_type": {t: mean([float(x) for x in v]) for t, v in sorted(per_type.items())},
        "judge": name,
        "judge_mode": used,
        "records": [
            {
                "id": r["id"],
                "question": r["question"],
                "answer": r["answer"],
                "prediction": a,
                "verdict": v,
                "judge": name,
                "judge_mode": used,
            }
            for r, a, v in zip(records, answers, verdicts, strict=True)
        ],
    }


def run_video_qa(
    model: LMM,
    processor: MultimodalProcessor,
    records: list[dict[str, Any]],
    gen: GenerationOptions,
    judge: ChatClient | None = None,
    mode: JudgeMode = "videochatgpt",
) -> dict[str, Any]:
    """Answer every question about its video (a file or a frame folder) and judge it.

    Args:
        mode: the LLM judge's protocol, ``"videochatgpt"`` or ``"hound"`` (module docstring).

    Returns:
        :func:`judge_answers`' summary.
    """
    if mode not in JUDGE_MODES:
        raise ValueError(f"video QA judge mode must be one of {JUDGE_MODES}, got {mode!r}")
    if judge is not None and mode == "hound":
        require_captions(records)  # before generating a single answer
    examples = [question(str(r["id"]), r["question"], video=Path(r["video_path"])) for r in records]
    answers = answer(model, processor, examples, gen, "video-qa", max_new_tokens=min(gen.max_new_tokens, 64))
    return judge_answers(records, answers, judge, mode, progress=gen.progress)
