"""What every run of ``ftlib finetune`` and ``ftlib compare`` shares, whatever the model.

* :class:`Run`: the output folder (``runs/<time>-<name>`` unless the config names one), the
  step log, ``metrics.json`` and the plots, and the main-process guard: under ``accelerate
  launch`` every process trains, the main one alone creates, writes and prints;
* :func:`run_metrics`: the fields every ``metrics.json`` carries (the run's settings, its
  history and test figures, its time, memory and hardware);
* :func:`build_loaders`: the train, validation and test loaders of a classifier run.

The jobs themselves are ``ftlib.pipeline`` (a classifier: the seven steps), ``ftlib.pipeline_llm``
(a generative model) and ``ftlib.compare`` (a grid of classifier runs).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ftlib.reporting import allocator, device_report, peak_memory_mb, save_run_plots

__all__ = ["Run", "run_metrics", "build_loaders"]


class Run:
    """One run's folder and log. ``name`` follows the time in the default folder's name."""

    def __init__(self, out: str | Path | None, name: str, log: Callable[[str], None] = print) -> None:
        from ftlib.devices import is_main_process

        self.started = time.perf_counter()
        self.main = is_main_process()
        self.log = log if self.main else (lambda *_: None)
        self.out = Path(out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name.replace('/', '_')}")
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)

    def seconds(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def write_json(self, name: str, data) -> Path:
        """``data`` as ``<out>/<name>`` (main process only)."""
        path = self.out / name
        if self.main:
            path.write_text(json.dumps(data, indent=2))
        return path

    def finish(self, metrics: dict, history, test: dict, class_names) -> dict:
        """Write ``metrics.json`` and the plots (main process only); ``metrics`` with ``"out"`` added."""
        if self.main:
            self.write_json("metrics.json", metrics)
            save_run_plots(history, test, class_names, self.out)
        return {**metrics, "out": str(self.out)}


def run_metrics(cfg, run: Run, splits, history, test: dict, **extra) -> dict:
    """The fields every ``metrics.json`` carries, then ``extra`` (a job's own)."""
    return {
        "model": cfg.model, "dataset": cfg.dataset, "task": cfg.task, "technique": cfg.technique,
        "train_size": len(splits.train), "val_size": len(splits.val), "test_size": len(splits.test),
        "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
        "best_epoch": history.best_epoch, "history": history.to_list(), "test": test,
        **extra, "deterministic": cfg.deterministic,
        "total_seconds": run.seconds(), "peak_memory_mb": peak_memory_mb(), "allocator": allocator(),
        **device_report(),
    }


def build_loaders(cfg, splits, tokenizer=None):
    """Train (shuffled, seeded), validation and test loaders for ``cfg`` (a resolved ``FinetuneConfig``).

    Text batches are grouped by length (see ``ftlib.data.LengthGroupedBatchSampler``),
    validation and test ones too: only their metrics are used here. Evaluation batches
    are twice the training size (no gradients to keep).
    """
    from ftlib.data import make_loader

    common = dict(seed=cfg.seed, tokenizer=tokenizer, max_length=cfg.max_length, image_size=cfg.image_size)
    grouped = cfg.task == "text"
    return (make_loader(splits.train, cfg.model, batch_size=cfg.batch_size, shuffle=True, **common),
            make_loader(splits.val, cfg.model, batch_size=2 * cfg.batch_size, group_by_length=grouped, **common),
            make_loader(splits.test, cfg.model, batch_size=2 * cfg.batch_size, group_by_length=grouped, **common))
