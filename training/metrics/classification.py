"""Classification metrics shared by the classifiers' recipes (news, image)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

CLASS_METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")  # what class_metrics reports


def class_metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average="macro", zero_division=0)
    return {"accuracy": float((labels == predicted).mean()), "macro_precision": float(precision),
            "macro_recall": float(recall), "macro_f1": float(f1)}
