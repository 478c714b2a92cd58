import numpy as np
import pytest
from sklearn import metrics as skm

from ftlib.evaluate import (HeldOutTest, bootstrap_interval, confusion_matrix, held_out_metrics, macro_f1,
                            plot_confusion_matrix, plot_history)


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 4, 200))
    return y_true, y_pred


def test_confusion_matrix_matches_sklearn(predictions):
    y_true, y_pred = predictions
    assert np.array_equal(confusion_matrix(y_true, y_pred, 4), skm.confusion_matrix(y_true, y_pred, labels=range(4)))
    with pytest.raises(ValueError, match="same length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)


def test_macro_f1_matches_sklearn_and_is_not_micro(predictions):
    y_true, y_pred = predictions
    assert macro_f1(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    imbalanced_true = np.array([0] * 90 + [1] * 10)
    all_zero = np.zeros(100, dtype=int)
    assert macro_f1(imbalanced_true, all_zero) == pytest.approx(skm.f1_score(imbalanced_true, all_zero, average="macro", zero_division=0))
    assert macro_f1(imbalanced_true, all_zero) < 0.5 < skm.f1_score(imbalanced_true, all_zero, average="micro")


def test_bootstrap_interval_brackets_accuracy_and_is_seeded():
    correct = np.array([True] * 80 + [False] * 20)
    low, high = bootstrap_interval(correct, 2000, seed=0)
    assert low < 0.8 < high and 0.05 < high - low < 0.25
    assert bootstrap_interval(correct, 200, seed=1) == bootstrap_interval(correct, 200, seed=1)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([], 10)


def test_held_out_test_is_used_once(tiny_cnn, image_loader):
    test = HeldOutTest(image_loader, ["a", "b", "c"])
    metrics = test.evaluate(tiny_cnn)
    assert set(metrics) >= {"accuracy", "macro_f1", "confusion_matrix", "per_class", "accuracy_95ci"}
    assert sum(map(sum, metrics["confusion_matrix"])) == 48
    with pytest.raises(RuntimeError, match="already used once"):
        test.evaluate(tiny_cnn)
    assert test.evaluate(tiny_cnn, allow_reuse=True)["accuracy"] == metrics["accuracy"]


def test_plots_are_saved(tmp_path):
    history = [{"epoch": 0, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 0.9, "val_accuracy": 0.6},
               {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.7}]
    plot_history(history, path=tmp_path / "curves.png")
    plot_confusion_matrix(held_out_metrics([0, 1], [0, 0], ["a", "b"])["confusion_matrix"], ["a", "b"],
                          path=tmp_path / "cm.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000 and (tmp_path / "cm.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="empty"):
        plot_history([])


@pytest.mark.parametrize("num_epochs", [1, 2, 3, 4, 30])
def test_learning_curves_label_whole_epochs(num_epochs):
    import matplotlib.pyplot as plt

    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "train_accuracy": 0.5, "val_loss": 0.9,
                "val_accuracy": 0.6} for e in range(num_epochs)]
    ax = plot_history(history)
    for axis in ax:
        lo, hi = axis.get_xlim()
        ticks = [t for t in axis.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert 1 <= min(ticks) and max(ticks) <= num_epochs
        if num_epochs <= 4:
            assert ticks == list(range(1, num_epochs + 1))
    plt.close(ax[0].figure)
