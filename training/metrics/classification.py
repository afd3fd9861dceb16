"""Classification metrics shared by the classifiers' recipes (news, image)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import softmax
from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support

CLASS_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")  # what class_metrics reports


def class_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    return {"accuracy": float((labels == predicted).mean()), "macro_precision": float(precision),
            "macro_recall": float(recall), "macro_f1": float(f1)}


def classification_results(labels: np.ndarray, logits: np.ndarray, classes: list[str], mistakes: int,
                           describe: Callable[[int], dict[str, Any]]) -> tuple[dict[str, Any], np.ndarray]:
    """The macro metrics, the per-class report, the confusion matrix and the `mistakes` most confident mistakes (each
    with what `describe(index)` says of its example); and those mistakes' indices, most confident first."""
    probs = softmax(logits, axis=1)
    predicted = probs.argmax(axis=1)
    indices = list(range(len(classes)))
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")][:mistakes]
    return {**class_metrics(labels, predicted),
            "per_class": classification_report(labels, predicted, labels=indices, target_names=classes,
                                               output_dict=True, zero_division=0),
            "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
            "most_confident_mistakes": [{**describe(int(i)), "true": classes[labels[i]],
                                         "predicted": classes[predicted[i]],
                                         "confidence": round(float(probs[i].max()), 4)} for i in worst]}, worst
