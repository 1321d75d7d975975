"""Video QA (MSVD-QA, MSRVTT-QA, TGIF-QA, … as evaluated by Video-ChatGPT and i-SRT).

Records (JSON list or JSONL): ``{id | question_id, video | video_name, question, answer}``; videos
from a local folder (decord; the model's frame sampling).

- **LLM judge** (Video-ChatGPT's protocol, https://arxiv.org/abs/2306.05424): the judge compares
  the predicted answer with the correct one and replies with a Python dict
  ``{'pred': 'yes'|'no', 'score': N}``; we report accuracy (share of ``yes``) and the mean score.
  The released evaluation prompt asks for an integer 0–5 (the i-SRT paper reports 1–5 scale
  numbers from the same script); we accept 0–5.
- **Exact judge** on ShapeWorld videos: :func:`mmalign.shapeworld.judges.qa_correct` per item;
  ``pred`` = correct, ``score`` = 5 if correct else 0, plus accuracy per question type.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from mmalign.data.processor import MultimodalProcessor
from mmalign.eval.common import GenerationOptions, answer, mean, media_file, question, read_records
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


def judge_messages(record: dict[str, Any], prediction: str) -> list[dict[str, str]]:
    """System + user messages of the judge for one record."""
    user = USER.format(question=record["question"], answer=record["answer"], pred=prediction)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


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


def load_video_qa(path: str | Path, video_dir: str | Path) -> list[dict[str, Any]]:
    """Video QA records with ``video_path`` resolved (a bare ``video_name`` gets ``.mp4``)."""
    records = read_records(
        path, ("video", "question", "answer"), aliases={"video_name": "video", "question_id": "id"}
    )
    for i, r in enumerate(records):
        r.setdefault("id", str(i))
        name = str(r["video"])
        if not Path(name).suffix and not (Path(video_dir) / name).is_file():
            name += ".mp4"
        r["video_path"] = str(media_file(video_dir, name, r["_where"]))
    return records


def shapeworld_records(data_dir: str | Path, split: str = "test", n: int = 100) -> list[dict[str, Any]]:
    """The video QA items of a ShapeWorld split (exact truth in ``truth``)."""
    from mmalign.eval.shapeworld import _read_jsonl

    root = Path(data_dir)
    items = [q for q in _read_jsonl(root / "qa" / f"{split}.jsonl") if "video" in q][:n]
    return [
        {
            "id": f"{q['scene_id']}-{k}",
            "video": q["video"],
            "video_path": str(root / q["video"]),
            "question": q["question"],
            "answer": str(q["answer"]),
            "truth": q,
        }
        for k, q in enumerate(items)
    ]


def run_video_qa(
    model: LMM,
    processor: MultimodalProcessor,
    records: list[dict[str, Any]],
    gen: GenerationOptions,
    judge: ChatClient | None = None,
) -> dict[str, Any]:
    """Answer every question about its video and judge it.

    Returns:
        ``accuracy``, ``score`` (mean 0–5), ``n``, ``n_unparsed``, ``per_type`` (exact judge),
        ``judge``, ``records``.
    """
    examples = [question(str(r["id"]), r["question"], video=Path(r["video_path"])) for r in records]
    answers = answer(model, processor, examples, gen, "video-qa", max_new_tokens=min(gen.max_new_tokens, 64))
    per_type: dict[str, list[bool]] = defaultdict(list)
    if judge is None:
        if any("truth" not in r for r in records):
            raise ValueError("video QA records without ShapeWorld truth need an LLM judge (--judge-model)")
        verdicts: list[dict | None] = []
        for r, a in zip(records, answers, strict=True):
            ok = qa_correct(r["truth"], a)
            per_type[r["truth"]["type"]].append(ok)
            verdicts.append({"pred": ok, "score": 5 if ok else 0})
    else:
        convs = [judge_messages(r, a) for r, a in zip(records, answers, strict=True)]
        verdicts = judge.chat_many(convs, validate=parse_judgement, on_invalid="none", desc="video-qa-judge")
    done = [v for v in verdicts if v is not None]
    return {
        "accuracy": mean([float(v["pred"]) for v in done]),
        "score": mean([v["score"] for v in done]),
        "n": len(done),
        "n_unparsed": len(verdicts) - len(done),
        "per_type": {t: mean([float(x) for x in v]) for t, v in sorted(per_type.items())},
        "judge": "exact" if judge is None else judge.config.model,
        "records": [
            {"id": r["id"], "question": r["question"], "answer": r["answer"], "prediction": a, "verdict": v}
            for r, a, v in zip(records, answers, verdicts, strict=True)
        ],
    }
