"""i-SRT / ISR-DPO: iterative self-retrospective DPO for video LMMs (https://arxiv.org/abs/2406.11280).

One iteration t: sample K responses → retrospective context ``c_t = π_t(V, c_{t−1})`` →
self-judge with ``c_t`` (both orders, answer-letter log-probs) → LLaVA-Hound pairs with the
reference log-probs computed while sampling → DPO → evaluation. ``train/isrt.py`` wires the
stages; each stage is resumable (:mod:`mmalign.isrt.store`).
"""
