"""Checks of 07_evaluate: confusion matrix, macro F1, bootstrap interval, touching the test set once."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ftlib.checks._common import CheckFailure, array_equal, as_array, as_float, as_tuple, call, expect, quiet
from ftlib.checks.remote import observe
from ftlib.evaluate import bootstrap_interval as reference_bootstrap_interval
from ftlib.evaluate import confusion_matrix as reference_confusion_matrix
from ftlib.evaluate import macro_f1 as reference_macro_f1

__all__ = ["check_confusion_matrix", "check_macro_f1", "check_bootstrap_interval", "check_select_and_test",
           "reference_select_and_test", "probe_confusion_matrix", "probe_bootstrap_interval", "probe_select_and_test"]


def _labels(seed: int, n: int, k: int, skew: bool = False):
    rng = np.random.default_rng(seed)
    p = np.array([0.6] + [0.4 / (k - 1)] * (k - 1)) if skew else None
    y_true = rng.choice(k, size=n, p=p)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.choice(k, size=n))
    return y_true, y_pred


def _confusion_cases(thorough: bool) -> list:
    cases = [(_labels(0, 50, 3), 3), ((np.array([0, 1, 1]), np.array([0, 0, 1])), 2),
             ((np.array([0, 0, 2]), np.array([0, 2, 2])), 4)]
    if thorough:
        cases.append((_labels(1, 500, 10, skew=True), 10))
    return cases


def _counts(value) -> np.ndarray:
    got = as_array(value, "the confusion matrix")
    if got.dtype.kind not in "biuf" or got.dtype.itemsize > 8:  # object, float128...: not data, go by element
        got = as_array(got.tolist(), "the confusion matrix")
    return got


def probe_confusion_matrix(confusion_matrix, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their matrix for each case, and whether the labels survived."""
    with quiet():
        observed = []
        for (y_true, y_pred), k in _confusion_cases(thorough):
            before = (y_true.copy(), y_pred.copy())
            got = _counts(call(confusion_matrix, y_true, y_pred, k, name="confusion_matrix"))
            observed.append({"matrix": got,
                             "modified": not (array_equal(y_true, before[0]) and array_equal(y_pred, before[1]))})
        return observed


def check_confusion_matrix(confusion_matrix, *, thorough: bool = False) -> None:
    """Rows are true classes, columns predictions; absent classes give zero rows."""
    observed = observe(probe_confusion_matrix, confusion_matrix, thorough=thorough)
    with quiet():
        for ((y_true, y_pred), k), seen in zip(_confusion_cases(thorough), observed, strict=True):
            got = as_array(seen["matrix"], "the confusion matrix")
            want = reference_confusion_matrix(y_true, y_pred, k)
            expect(got.shape == want.shape, f"Wrong shape for {k} classes.", want.shape, got.shape,
                   "The matrix is num_classes x num_classes, even for classes that never occur.")
            if not array_equal(got, want):
                hint = ("It looks transposed: C[i, j] counts true class i predicted as j."
                        if array_equal(got, want.T) else "C[i, j] counts examples of true class i predicted as j.")
                raise CheckFailure(f"Wrong confusion matrix ({len(y_true)} examples, {k} classes).", want.tolist(),
                                   got.tolist(), hint)
            expect(seen["modified"] is False, "confusion_matrix modified its inputs.")


def check_macro_f1(macro_f1, *, thorough: bool = False) -> None:
    """Equals the reference (and scikit-learn's ``f1_score(average='macro')``)."""
    cases = [_labels(2, 200, 3, skew=True), (np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 0, 0])),
             _labels(3, 120, 4)]
    if thorough:
        cases.append(_labels(4, 1000, 10, skew=True))
    with quiet():
        for y_true, y_pred in cases:
            got = as_float(call(macro_f1, y_true, y_pred, name="macro_f1"), "macro_f1's result")
            want = reference_macro_f1(y_true, y_pred)
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12):
                accuracy = float((y_true == y_pred).mean())
                hint = "Compute F1 for each class from its precision and recall, then take the plain mean over classes."
                if math.isclose(got, accuracy, rel_tol=1e-9):
                    hint = "That is the accuracy (micro F1): macro F1 averages per-class F1 scores. " + hint
                raise CheckFailure(f"Wrong macro F1 ({len(y_true)} examples, classes {sorted(set(y_true.tolist()))}).",
                                   round(want, 6), round(got, 6), hint + " A class never predicted has F1 = 0.")


def _bootstrap_inputs(thorough: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random(n) < 0.8 for n in ((100, 400, 1600) if thorough else (100, 400))]


_REPEATS = 4


def probe_bootstrap_interval(bootstrap_interval, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their interval twice per test set, and whether the input survived."""
    with quiet():
        observed = []
        for correct in _bootstrap_inputs(thorough):
            before = correct.copy()
            got = as_tuple(call(bootstrap_interval, correct, 2000, 0, name="bootstrap_interval"), 2,
                           "bootstrap_interval")
            low, high = as_float(got[0], "low"), as_float(got[1], "high")
            # Intervals of a few hundred booleans are coarse, so two unseeded runs can agree by
            # chance (one in four, measured): the check compares four more runs with the first.
            again = []
            for _ in range(_REPEATS):
                other = as_tuple(call(bootstrap_interval, correct, 2000, 0, name="bootstrap_interval"), 2,
                                 "bootstrap_interval")
                again.append((as_float(other[0], "low"), as_float(other[1], "high")))
            observed.append({"interval": (low, high), "again": again, "modified": not array_equal(correct, before)})
        return observed


def check_bootstrap_interval(bootstrap_interval, *, thorough: bool = False) -> None:
    """A percentile interval close to the reference's, around the accuracy, seeded and narrowing with n."""
    observed = observe(probe_bootstrap_interval, bootstrap_interval, thorough=thorough)
    with quiet():
        widths = []
        for correct, seen in zip(_bootstrap_inputs(thorough), observed, strict=True):
            n = len(correct)
            low, high = (as_float(v, "the interval") for v in as_tuple(seen["interval"], 2, "bootstrap_interval"))
            again = [tuple(as_float(v, "the interval") for v in as_tuple(run, 2, "bootstrap_interval"))
                     for run in as_tuple(seen["again"], _REPEATS, "the repeated runs")]
            want = reference_bootstrap_interval(correct, 2000, 0)
            accuracy = float(correct.mean())
            expect(low <= accuracy <= high, f"The interval should contain the accuracy ({n} examples).",
                   f"low <= {accuracy:.3f} <= high", (round(low, 4), round(high, 4)))
            expect(abs(low - want[0]) < 0.015 and abs(high - want[1]) < 0.015,
                   f"The 95% interval is off ({n} examples, accuracy {accuracy:.3f}).",
                   tuple(round(v, 3) for v in want), (round(low, 3), round(high, 3)),
                   "Resample the booleans WITH replacement (same size), take each resample's mean, then the "
                   "2.5% and 97.5% quantiles of those means.")
            expect(all(run == (low, high) for run in again),
                   f"The same seed should give the same interval ({n} examples).", (round(low, 4), round(high, 4)),
                   [tuple(round(v, 4) for v in run) for run in again],
                   "Draw the resamples from np.random.default_rng(seed), not from the global np.random.")
            expect(seen["modified"] is False, "bootstrap_interval modified its input.")
            widths.append(high - low)
        expect(widths[-1] < widths[0], "The interval should narrow as the test set grows.",
               "narrower for more examples", [round(w, 4) for w in widths])


class _Lookup(nn.Module):
    """A fixed classifier: input ``(B, 1)`` example ids, output one-hot logits of stored predictions."""

    def __init__(self, predictions: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("table", torch.as_tensor(predictions, dtype=torch.long))
        self.dummy = nn.Parameter(torch.zeros(1))  # evaluate() reads the device from a parameter
        self.k = int(predictions.max()) + 1

    def forward(self, x):
        ids = x[:, 0].long()
        return nn.functional.one_hot(self.table[ids], 3).float() * 5 + self.dummy


class _SpyTest:
    """Stands in for ``HeldOutTest``: counts evaluations and remembers which model was tested."""

    def __init__(self) -> None:
        self.models: list = []
        self.result = {"accuracy": 0.5, "macro_f1": 0.5, "marker": object()}

    def evaluate(self, model, **kwargs):
        self.models.append(model)
        return self.result


def reference_select_and_test(candidates, val_loader, test):
    """Pick the candidate with the best validation accuracy; evaluate it on the test set, once."""
    from ftlib.train import evaluate

    scores = {name: evaluate(model, val_loader)["accuracy"] for name, model in candidates.items()}
    best = max(scores, key=scores.get)
    return best, test.evaluate(candidates[best])


def _selection_accuracy(thorough: bool) -> dict[str, float]:
    # the validation accuracy of each candidate
    if thorough:
        return {"a": 0.5, "b": 0.55, "c": 0.9, "d": 0.3}
    return {"frozen features": 0.70, "full fine-tune": 0.85, "LP-FT": 0.60}


def probe_select_and_test(select_and_test, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: their selection among fixed classifiers, with a test set that counts."""
    with quiet():
        rng = np.random.default_rng(0)
        n = 40
        y_val = rng.integers(0, 3, size=n)
        val_loader = [{"pixel_values": torch.arange(i, i + 10, dtype=torch.float32)[:, None],
                       "labels": torch.as_tensor(y_val[i:i + 10])} for i in range(0, n, 10)]
        candidates = {}
        for name, acc in _selection_accuracy(thorough).items():
            predictions = np.where(np.arange(n) < int(acc * n), y_val, (y_val + 1) % 3)
            candidates[name] = _Lookup(predictions)
        test = _SpyTest()
        result = as_tuple(call(select_and_test, dict(candidates), val_loader, test, name="select_and_test"), 2,
                          "select_and_test")
        # which candidates the test set saw, by identity: only the probe holds the models
        tested = [[k for k, m in candidates.items() if m is model] for model in test.models]
        name = result[0] if result[0] is None or type(result[0]) in (str, int, float, bool) else \
            f"a {type(result[0]).__name__}"  # what it is, for the message: only data leaves the probe
        return {"evaluations": len(test.models), "tested": tested[0] if tested else [], "name": name,
                "metrics_unchanged": result[1] is test.result}


def check_select_and_test(select_and_test, *, thorough: bool = False) -> None:
    """Chooses on validation, touches the test set exactly once, with the chosen model."""
    observed = observe(probe_select_and_test, select_and_test, thorough=thorough)
    with quiet():
        accuracy = _selection_accuracy(thorough)
        best = max(accuracy, key=accuracy.get)
        expect(observed["evaluations"] == 1, "The test set must be evaluated exactly once.", 1,
               observed["evaluations"],
               "Score every candidate on the VALIDATION loader, pick the best, then call test.evaluate once.")
        tested = observed["tested"]
        expect(tested == [best], "The test set was used on the wrong model.", best, tested or "an unknown model",
               "Evaluate on test only the candidate with the highest validation accuracy.")
        expect(type(observed["name"]) is str and observed["name"] == best,
               "The returned name should be the chosen candidate's.", best, observed["name"])
        expect(observed["metrics_unchanged"] is True, "Return the metrics that test.evaluate gave, unchanged.")
