"""The default main job, as `make demo` runs it: the model it keeps gives back its test accuracy.

One full run of `ftlib finetune` with its defaults (about 2.5 minutes on 2 cores): the
saved model, reloaded in this process by ftlib and by `transformers.pipeline` without
ftlib, must reproduce the test accuracy the run reported, on the same test split.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ftlib.data import load_dataset, split_dataset
from ftlib.config import JOBS
from ftlib.saving import load_finetuned

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("main-job")
    done = subprocess.run([sys.executable, "-m", "ftlib.cli", "finetune", "--quiet", "--out", str(out)],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "metrics.json").read_text()), done.stdout


def _test_split(metrics):
    defaults = JOBS["text"]
    assert metrics["model"] == defaults["model"] and metrics["dataset"] == defaults["dataset"]
    splits = split_dataset(load_dataset(metrics["dataset"]), train_size=metrics["train_size"],
                           val_size=metrics["val_size"], test_size=metrics["test_size"], seed=metrics["seed"])
    return splits.test


def test_the_saved_model_reproduces_the_reported_test_accuracy(default_run):
    out, metrics, _ = default_run
    assert metrics["model_path"] == str(out / "model")
    test = _test_split(metrics)
    assert len(test) == metrics["test"]["num_examples"]
    kept = load_finetuned(metrics["model_path"])
    predicted = [p["label"] for p in kept.predict(list(test.inputs))]
    truth = [test.class_names[y] for y in test.labels]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth)]))
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-12)
    # Far above the majority class (about 0.58): the run trained a useful model.
    assert accuracy > 0.78


def test_the_saved_model_answers_in_transformers_pipeline_as_in_ftlib(default_run):
    from transformers import pipeline

    _, metrics, _ = default_run
    texts = list(_test_split(metrics).inputs[:64])
    ours = [p["label"] for p in load_finetuned(metrics["model_path"]).predict(texts)]
    classify = pipeline("text-classification", model=metrics["model_path"], device="cpu")
    theirs = [r["label"] for r in classify(texts, truncation=True, max_length=JOBS["text"]["max_length"])]
    assert theirs == ours


def test_the_run_ends_with_the_model_answering(default_run):
    out, _, stdout = default_run
    tail = stdout.strip().splitlines()[-4:]
    assert any("ftlib predict" in line and str(out / "model") in line for line in tail), tail
