"""Step 7: evaluation on the held-out test set, touched once.

Choose everything (epochs, learning rate, technique) on the validation set; then
measure the chosen model once on the test set. :class:`HeldOutTest` enforces that: a
second evaluation raises unless explicitly allowed, so a notebook cannot quietly turn
its test set into a second validation set.

Metrics are written out in NumPy (they are course exercises) and checked against
scikit-learn in the tests. Plotting functions are thin and separate.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "confusion_matrix",
    "macro_f1",
    "per_class_report",
    "bootstrap_interval",
    "held_out_metrics",
    "HeldOutTest",
    "plot_history",
    "plot_confusion_matrix",
]


def _labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {y.shape}.")
    if len(y) and not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class ids; got dtype {y.dtype}.")
    return y


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of examples of true class ``i`` predicted as ``j``.

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], num_classes=2).tolist()
    [[1, 0], [1, 1]]
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same length; got {len(y_true)} and {len(y_pred)}.")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= num_classes):
        raise ValueError(f"class ids must be in [0, {num_classes}); got values outside that range.")
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def _precision_recall_f1(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> float:
    """F1 per class, then the unweighted mean over classes (each class counts equally).

    Classes that appear in neither ``y_true`` nor ``y_pred`` are left out (as
    scikit-learn does); a class with no predictions scores F1 = 0.
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(y_true) == 0:
        raise ValueError("macro_f1 needs at least one example.")
    present = np.union1d(y_true, y_pred)
    k = num_classes or int(present.max()) + 1
    _, _, f1 = _precision_recall_f1(confusion_matrix(y_true, y_pred, k))
    return float(f1[present].mean())


def per_class_report(y_true, y_pred, class_names: Sequence[str]) -> list[dict]:
    """Precision, recall, F1 and support for each class."""
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    precision, recall, f1 = _precision_recall_f1(matrix)
    return [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, matrix.sum(axis=1))]


def bootstrap_interval(correct: Sequence[bool] | Sequence[float], num_resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the accuracy (or of any mean over examples).

    ``correct`` holds one boolean per test example (or one score, such as each generated
    text's ROUGE-L). Resample it with replacement ``num_resamples`` times and return the
    ``(1-confidence)/2`` and ``(1+confidence)/2`` quantiles of the resampled means.
    """
    correct = np.asarray(correct, dtype=float)
    if correct.ndim != 1 or len(correct) == 0:
        raise ValueError(f"correct must be a non-empty 1-D array of booleans; got shape {correct.shape}.")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1; got {num_resamples!r}.")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(num_resamples, len(correct)))
    accuracies = correct[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(accuracies, [alpha, 1.0 - alpha])
    return float(low), float(high)


def held_out_metrics(y_true, y_pred, class_names: Sequence[str], *, seed: int = 0) -> dict:
    """Accuracy (with a 95% bootstrap interval), macro F1, confusion matrix, per-class report."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    correct = y_true == y_pred
    return {
        "accuracy": float(correct.mean()),
        "accuracy_95ci": list(bootstrap_interval(correct, 1000, seed)),
        "macro_f1": macro_f1(y_true, y_pred, len(class_names)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, len(class_names)).tolist(),
        "per_class": per_class_report(y_true, y_pred, class_names),
        "num_examples": int(len(y_true)),
    }


class HeldOutTest:
    """A test loader that may be evaluated once.

    >>> test = HeldOutTest(test_loader, class_names)      # doctest: +SKIP
    >>> metrics = test.evaluate(best_model)               # doctest: +SKIP
    >>> test.evaluate(other_model)                        # doctest: +SKIP
    RuntimeError: The test set was already used ...
    """

    def __init__(self, loader, class_names: Sequence[str]) -> None:
        self.loader = loader
        self.class_names = list(class_names)
        self.uses_ = 0

    def evaluate(self, model, *, allow_reuse: bool = False, progress: bool = False) -> dict:
        if self.uses_ and not allow_reuse:
            raise RuntimeError(
                "The test set was already used once. Choose models and settings on the "
                "validation set; evaluating on test again turns it into a validation set "
                "and makes the reported accuracy optimistic. Pass allow_reuse=True only if "
                "you report every test evaluation you made."
            )
        from ftlib.train import evaluate

        self.uses_ += 1
        result = evaluate(model, self.loader, progress=progress, desc="test")
        return held_out_metrics(result["y_true"], result["y_pred"], self.class_names)


def plot_history(history, ax=None, path=None):
    """Learning curves (loss and accuracy, train vs validation) from a History or list of dicts."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = history.to_list() if hasattr(history, "to_list") else list(history)
    if not epochs:
        raise ValueError("history is empty: train for at least one epoch first.")
    x = [e["epoch"] + 1 for e in epochs]
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    fig = ax[0].figure
    for i, metric in enumerate(("loss", "accuracy")):
        ax[i].plot(x, [e[f"train_{metric}"] for e in epochs], "o-", label="train")
        if epochs[0].get(f"val_{metric}") is not None:
            ax[i].plot(x, [e[f"val_{metric}"] for e in epochs], "o-", label="validation")
        ax[i].set_xlabel("epoch")
        # Epochs are whole numbers; half a unit of margin keeps a one-epoch run readable.
        if len(x) <= 10:
            ax[i].set_xticks(x)
        else:
            ax[i].xaxis.set_major_locator(MaxNLocator(integer=True))
        ax[i].set_xlim(min(x) - 0.5, max(x) + 0.5)
        ax[i].set_ylabel(metric)
        ax[i].legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return ax


def plot_confusion_matrix(matrix, class_names: Sequence[str], ax=None, path=None):
    """A labelled heat map of a confusion matrix (rows: true class, columns: predicted)."""
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    if ax is None:
        size = 2.5 + 0.45 * len(class_names)
        _, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > threshold else "black", fontsize=8)
    ax.figure.tight_layout()
    if path is not None:
        ax.figure.savefig(path, dpi=110)
    return ax
