"""The classical text baseline: TF-IDF word uni/bigrams + multinomial logistic regression (scikit-learn)."""

from __future__ import annotations

import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline


def train_tfidf_baseline(texts: list[str], labels: np.ndarray, seed: int = 0) -> tuple[Pipeline, float]:
    """The fitted pipeline and its fit time in seconds."""
    start = time.perf_counter()
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
        LogisticRegression(C=10.0, max_iter=1000, random_state=seed),
    )
    pipeline.fit(texts, labels)
    return pipeline, time.perf_counter() - start
