"""Can a classifier tell synthetic users from real ones? Cross-validated AUC on per-user features.

0.5 means it cannot (perfect); 1.0 means every synthetic user gives itself away. The same classifier
trained to tell holdout users from training users shows what chance alone gives at this sample size.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

FOLDS = 5


def classifier(seed: int) -> HistGradientBoostingClassifier:
    """Gradient-boosted trees for the discriminator (a few hundred users a side)."""
    return HistGradientBoostingClassifier(max_iter=60, learning_rate=0.1, max_leaf_nodes=15, early_stopping=False,
                                          random_state=seed)


def utility_model(seed: int) -> HistGradientBoostingClassifier:
    """Gradient-boosted trees for the utility tasks: many cases, few positives, so shallower and smoother."""
    return HistGradientBoostingClassifier(max_iter=50, learning_rate=0.1, max_leaf_nodes=8, min_samples_leaf=50,
                                          l2_regularization=1.0, early_stopping=False, random_state=seed)


def discriminator_auc(real: np.ndarray, other: np.ndarray, seed: int) -> float:
    """Out-of-fold AUC of telling ``other`` (label 1) from ``real`` (label 0)."""
    x = np.vstack([real, other])
    y = np.r_[np.zeros(len(real)), np.ones(len(other))]
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier(seed), x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))
