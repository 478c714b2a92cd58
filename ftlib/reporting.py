"""What a run of ``ftlib finetune`` records beside its metrics: peak memory, allocator, plots.

Shared by every run through ``ftlib.runner`` (the classifier job ``ftlib.pipeline``, the generative one
``ftlib.pipeline_llm``, ``ftlib compare``).
"""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

__all__ = ["peak_memory_mb", "allocator", "device_report", "save_run_plots"]


def peak_memory_mb() -> float:
    """This process's peak resident memory in MB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def allocator() -> str:
    """"tcmalloc" when this process runs on TCMalloc (see ``ftlib.cli``), else "system"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "tcmalloc" if "tcmalloc" in maps else "system"


def device_report() -> dict:
    """Where the run trained: ``{"device": "cpu"}``, or a GPU's name and the most memory it had allocated."""
    import torch

    from ftlib.devices import default_device

    device = default_device()
    if device.type != "cuda":
        return {"device": device.type}
    return {"device": torch.cuda.get_device_name(device),
            "gpu_peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def save_run_plots(history, metrics_test: dict, class_names, out: Path) -> None:
    """Write ``learning_curves.png`` (when there is a history) and, for a classifier's test figures,
    ``confusion_matrix.png`` into ``out``."""
    import matplotlib

    if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # files only; no window needed
    import matplotlib.pyplot as plt

    from ftlib.evaluate import plot_confusion_matrix, plot_history

    if len(history):
        ax = plot_history(history, path=out / "learning_curves.png")
        plt.close(ax[0].figure)
    if "confusion_matrix" in metrics_test:  # a job whose answers are text has none
        ax = plot_confusion_matrix(metrics_test["confusion_matrix"], class_names, path=out / "confusion_matrix.png")
        plt.close(ax.figure)
