"""Contextual calibration (Zhao et al. 2021, "Calibrate Before Use").

A prompt (template plus demonstrations) biases a model toward some labels: the majority label of
the demonstrations, the most recent one, or simply frequent words. The bias is estimated from
content-free inputs ("N/A", "", "[MASK]") put through the same prompt: with no content, a fair
model would give every label the same probability. The label probabilities p of a real input are
then corrected as q ∝ p / p_cf (the paper's W = diag(p_cf)^-1, b = 0), and the prediction is
argmax q. lm-eval has no such option, so this module applies it to lm-eval's logged
log-likelihoods of each choice.
"""

from __future__ import annotations

import math

CONTENT_FREE = ("N/A", "", "[MASK]")


def content_free_doc(doc: dict, text: str) -> dict:
    """`doc` with every text field replaced by the content-free `text` (labels and ids kept)."""
    return {k: text if isinstance(v, str) else v for k, v in doc.items()}


def label_probabilities(logliks: list[float]) -> list[float]:
    """Log-likelihoods of each choice -> probabilities normalised over the choices."""
    top = max(logliks)
    weights = [math.exp(x - top) for x in logliks]
    return [w / sum(weights) for w in weights]


def bias(content_free_logliks: list[list[float]]) -> list[float]:
    """p_cf: the mean over the content-free inputs of their normalised label probabilities."""
    probs = [label_probabilities(ll) for ll in content_free_logliks]
    return [sum(column) / len(probs) for column in zip(*probs)]


def calibrated_prediction(logliks: list[float], p_cf: list[float]) -> int:
    """argmax_i p_i / p_cf_i."""
    probs = label_probabilities(logliks)
    return max(range(len(probs)), key=lambda i: probs[i] / p_cf[i])
