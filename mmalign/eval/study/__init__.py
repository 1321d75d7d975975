"""The efficacy study of issue 18: every alignment method against a same-budget control.

``config`` (typed YAML config; refuses unknown methods and budget mismatches), ``methods`` (each
method as builder + training commands), ``runner`` (resumable execution, held-out measurement,
training cost), ``report`` (mean ± std, the "beats the control" rule, targets, charts). The entry
script is ``eval/study.py``.
"""
