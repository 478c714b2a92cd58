"""fit under `accelerate launch --num_processes 2`, on the CPU (gloo), against one process.

One launch (about 10 s, most of it two interpreters importing torch) runs
tests/distributed_fit.py in two processes: a short fit with early-stopping bookkeeping
(best weights restored), then `ftlib finetune` on a tiny image folder.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).parent


def _image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["dark", "mid", "light"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(60 + 70 * c, 30, size=(32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("launch")
    folder = _image_folder(out / "images")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "FTLIB_PROGRESS": "lines",
           "FTLIB_ALLOCATOR": "system", "PYTHONPATH": str(HERE.parent)}
    # --multi_gpu is accelerate's multi-process launcher (torchrun); without a GPU every
    # process runs on the CPU and the processes talk over gloo.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", str(HERE / "distributed_fit.py"), str(out), str(folder)]
    result = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout + result.stderr


@pytest.mark.slow
def test_every_process_ends_with_the_same_weights(launched):
    out, _ = launched
    first, second = (torch.load(out / f"weights{rank}.pt") for rank in (0, 1))
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"the processes disagree on {different}"  # BatchNorm statistics included


def test_gathered_validation_equals_one_process_on_the_same_weights(launched):
    out, _ = launched
    histories = [json.loads((out / f"history{rank}.json").read_text()) for rank in (0, 1)]
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h["epochs"]]  # noqa: E731
    assert strip(histories[0]) == strip(histories[1])  # the same decisions everywhere
    history = histories[0]
    best = history["epochs"][history["best_epoch"]]
    alone = json.loads((out / "alone.json").read_text())  # the restored best weights, one process, every example
    assert alone["examples"] == 45
    assert best["val_accuracy"] == alone["accuracy"]
    assert best["val_loss"] == pytest.approx(alone["loss"], rel=1e-5)
    assert history["precision"] == "fp32"


def test_only_the_main_process_writes_and_prints(launched):
    out, log = launched
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1, runs  # each process would name its own folder by its start time
    assert (runs[0] / "metrics.json").exists() and (runs[0] / "model").is_dir()
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["train_size"] + metrics["val_size"] + metrics["test_size"] == 36 and metrics["precision"] == "fp32"
    assert log.count("[1/7]") == 1 and log.count("epoch 1/3: train loss") == 1, log
