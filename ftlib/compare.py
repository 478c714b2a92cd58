"""One controlled comparison of fine-tuning techniques: what ``ftlib compare`` runs.

Every technique sees the same splits, the same seeds and the same budget (epochs,
batch size, base learning rate); each run starts from freshly loaded pretrained weights
and touches its test set once. Results are reported as mean and spread over seeds
(Dodge et al. 2020: seeds alone swing small-data fine-tuning by several points).

Written into the output folder:

* ``results.csv``: one row per run (technique, train size, seed, accuracies, times);
  appended as runs finish, so an interrupted comparison keeps what it measured;
* ``summary.md`` / ``summary.csv``: mean and standard deviation over seeds per
  technique and training size, per-epoch time and its ratio to full fine-tuning;
* ``accuracy_vs_train_size.png`` (data efficiency) and ``time_per_technique.png``.

The techniques themselves are in ``ftlib.techniques``; this module only runs the grid.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ftlib import arguments
from ftlib.config import COMPARE, COMPARE_QUICK, JOBS

__all__ = ["CompareConfig", "compare", "estimate_seconds", "summarize",
           "summary_markdown", "plot_accuracy_vs_train_size", "plot_times"]

# Seconds per example on an idle 2-core CPU, for the estimate (MiniLM: measured on Rotten
# Tomatoes with length-grouped batches, bench/techniques/rotten_tomatoes.sh, 2026-11-28).
_SECONDS_PER_EXAMPLE = {  # model: (train step, evaluation)
    "minilm-l6": (0.024, 0.0065),
    "efficientnet-lite0": (0.014, 0.004),
}
_DEFAULT_RATE = (0.002, 0.0005)  # tiny models


@dataclass
class CompareConfig:
    """Settings of a comparison; ``None`` means the task's default (``--quick``: smaller)."""

    task: str = "text"
    model: str | None = None
    dataset: str | None = None
    techniques: list[str] | None = None
    train_sizes: list[int] | None = None
    seeds: list[int] | None = None
    val_size: int | None = None
    test_size: int | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    max_length: int | None = None
    image_size: int | None = None
    quick: bool = False
    technique_options: dict = field(default_factory=dict)  # technique -> {option: value}
    out: str | None = None
    progress: bool = False  # per-epoch bars; the run-level log is always printed
    precision: str | None = None  # see FinetuneConfig

    def resolved(self) -> "CompareConfig":
        from ftlib.models import get_model_spec
        from ftlib.techniques import TECHNIQUES

        arguments.one_of(self.task, "task", sorted(COMPARE))
        values = asdict(self)
        defaults = {**JOBS[self.task], **(COMPARE_QUICK if self.quick else COMPARE)[self.task]}
        for key, default in defaults.items():
            if key in values and values[key] is None:  # the task defaults also name fields compare lacks
                values[key] = default
        cfg = CompareConfig(**values)
        for name in cfg.techniques:
            if name not in TECHNIQUES:
                raise ValueError(f"Unknown technique {name!r}. Available techniques: {', '.join(TECHNIQUES)}.")
        if len(set(cfg.techniques)) != len(cfg.techniques) or not cfg.techniques:
            raise arguments.ArgumentError("techniques", "must name each technique once", cfg.techniques)
        spec = get_model_spec(cfg.model)
        text_only = [t for t in cfg.techniques if TECHNIQUES[t].text_only and spec.task != "text"]
        if text_only:
            raise ValueError(f"Technique(s) {text_only} need a text (transformer) model; {cfg.model!r} is an "
                             f"{spec.task} model.")
        if "scratch" in cfg.techniques and not spec.pretrained:
            raise ValueError(f"Model {cfg.model!r} has no pretrained weights, so 'scratch' would equal 'full'.")
        for key in ("train_sizes", "seeds"):
            items = getattr(cfg, key)
            if not items or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
                raise arguments.ArgumentError(key, "must be a non-empty list of integers", items)
        if any(v < 1 for v in cfg.train_sizes):
            raise arguments.ArgumentError("train_sizes", "must be positive", cfg.train_sizes)
        for key in ("val_size", "test_size", "epochs", "batch_size", "max_length"):
            value = getattr(cfg, key)
            arguments.integer(value, key)
        arguments.number(cfg.lr, "lr")
        unknown = sorted(set(cfg.technique_options) - set(cfg.techniques))
        if unknown:
            raise ValueError(f"technique_options names {unknown}, which are not among the techniques compared "
                             f"({cfg.techniques}).")
        cfg.train_sizes = sorted(cfg.train_sizes)
        return cfg


def _run_units(technique: str, train_size: int, cfg: CompareConfig) -> tuple[float, float]:
    """(training examples processed, evaluated examples) of one run, for the time estimate."""
    evals = cfg.epochs * cfg.val_size + cfg.test_size
    if technique == "feature-extraction":
        return 0.0, train_size + cfg.val_size + cfg.test_size
    if technique == "frozen":
        return 0.0, cfg.epochs * (train_size + cfg.val_size) + train_size + cfg.test_size
    if technique == "lp-ft":
        return cfg.epochs * train_size, evals + train_size + cfg.val_size
    # Per-epoch time relative to full fine-tuning, measured on MiniLM (same benchmark).
    scale = {"lora": 0.87, "gradual": 0.76, "l2sp": 1.2, "lp-ft": 1.1}.get(technique, 1.0)
    return scale * cfg.epochs * train_size, evals


def estimate_seconds(cfg: CompareConfig) -> float:
    """Seconds the whole grid takes on an idle 2-core CPU (shared machines: 2-3x more)."""
    cfg = cfg.resolved()
    train_rate, eval_rate = _SECONDS_PER_EXAMPLE.get(cfg.model, _DEFAULT_RATE)
    if cfg.model == "efficientnet-lite0" and cfg.image_size:
        factor = (cfg.image_size / 96) ** 2
        train_rate, eval_rate = train_rate * factor, eval_rate * factor
    total = 0.0
    for size in cfg.train_sizes:
        for technique in cfg.techniques:
            n_train, n_eval = _run_units(technique, size, cfg)
            total += n_train * train_rate + n_eval * eval_rate + 2.0  # + loading the model
    return total * len(cfg.seeds)


_FIELDS = ["technique", "train_size", "seed", "test_accuracy", "test_macro_f1", "val_accuracy", "best_epoch",
           "epochs_run", "train_seconds", "epoch_seconds", "test_seconds", "trainable_parameters",
           "total_parameters"]


def _format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def compare(config: CompareConfig | None = None, *, log: Callable[[str], None] = print, **options) -> list[dict]:
    """Run every technique at every training size for every seed; write tables and plots.

    Pass a :class:`CompareConfig` or its fields, e.g. ``compare(task="image", quick=True)``.
    Returns the per-run rows (also in ``<out>/results.csv``).
    """
    from ftlib.data import load_dataset, split_dataset
    from ftlib.evaluate import HeldOutTest
    from ftlib.models import load_model, load_tokenizer
    from ftlib.config import FinetuneConfig
    from ftlib.runner import Run, build_loaders
    from ftlib.techniques import TECHNIQUES
    from ftlib.train import set_seed

    cfg = (config or CompareConfig(**options)).resolved()
    run = Run(cfg.out, f"compare-{cfg.model}-{cfg.dataset}", log)
    # Under `accelerate launch` every process trains; one writes and prints.
    main, log, out = run.main, run.log, run.out
    run.write_json("config.json", asdict(cfg))
    estimate = estimate_seconds(cfg)
    total_runs = len(cfg.seeds) * len(cfg.train_sizes) * len(cfg.techniques)
    log(f"Comparing {', '.join(cfg.techniques)} on {cfg.dataset} ({cfg.model}); train sizes {cfg.train_sizes}, "
        f"seeds {cfg.seeds}: {total_runs} runs, about {_format_minutes(estimate)} on an idle 2-core CPU.")

    raw = load_dataset(cfg.dataset)
    tokenizer = load_tokenizer(cfg.model) if raw.task == "text" else None
    csv_path = out / "results.csv"
    if main:
        with open(csv_path, "w", newline="") as f:
            csv.DictWriter(f, _FIELDS).writeheader()
    rows: list[dict] = []
    started = time.perf_counter()
    done_estimate = 0.0
    run = 0
    for seed in cfg.seeds:
        for size in cfg.train_sizes:
            splits = split_dataset(raw, train_size=size, val_size=cfg.val_size, test_size=cfg.test_size, seed=seed)
            for technique in cfg.techniques:
                run += 1
                run_cfg = FinetuneConfig(task=cfg.task, model=cfg.model, dataset=cfg.dataset, technique=technique,
                                         train_size=size, val_size=cfg.val_size, test_size=cfg.test_size,
                                         epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed,
                                         max_length=cfg.max_length, image_size=cfg.image_size,
                                         progress=cfg.progress, precision=cfg.precision)
                opts = dict(cfg.technique_options.get(technique, {}))
                if technique == "feature-extraction" and main:
                    opts.setdefault("cache_dir", str(out / "feature_cache"))
                run_cfg.technique_options = opts
                train_loader, val_loader, test_loader = build_loaders(run_cfg, splits, tokenizer)
                set_seed(seed)  # the new head's initial weights
                model = load_model(cfg.model, len(raw.class_names))
                t0 = time.perf_counter()
                result = TECHNIQUES[technique].run(model, train_loader, val_loader, run_cfg)
                train_seconds = time.perf_counter() - t0
                model = result.get("model", model)
                t1 = time.perf_counter()
                test = HeldOutTest(test_loader, raw.class_names)
                metrics = result["test"](test) if "test" in result else test.evaluate(model)
                history = result["history"]
                row = {
                    "technique": technique, "train_size": size, "seed": seed,
                    "test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
                    "val_accuracy": history[history.best_epoch]["val_accuracy"],
                    "best_epoch": history.best_epoch, "epochs_run": len(history),
                    "train_seconds": train_seconds,
                    "epoch_seconds": float(np.mean(history["seconds"])),
                    "test_seconds": time.perf_counter() - t1,
                    "trainable_parameters": result.get("trainable_parameters"),
                    "total_parameters": result.get("total_parameters"),
                }
                rows.append(row)
                if main:
                    with open(csv_path, "a", newline="") as f:
                        csv.DictWriter(f, _FIELDS).writerow(row)
                done_estimate += _single_estimate(cfg, technique, size)
                elapsed = time.perf_counter() - started
                remaining = max(0.0, estimate - done_estimate) * elapsed / max(done_estimate, 1e-9)
                log(f"[{run}/{total_runs}] {technique:<18} n={size:<5} seed {seed}: test acc "
                    f"{row['test_accuracy']:.3f} (val {row['val_accuracy']:.3f}) in {row['train_seconds']:.0f}s"
                    f" | elapsed {_format_minutes(elapsed)}, about {_format_minutes(remaining)} left")
                del model, result
    if not main:
        return rows
    summary = summarize(rows)
    _write_summary(summary, cfg, out)
    _save_plots(summary, out)
    log(f"Done in {_format_minutes(time.perf_counter() - started)}. Table: {out / 'summary.md'}; per run: "
        f"{csv_path}; plots: {out / 'accuracy_vs_train_size.png'}, {out / 'time_per_technique.png'}")
    return rows


def _single_estimate(cfg: CompareConfig, technique: str, size: int) -> float:
    train_rate, eval_rate = _SECONDS_PER_EXAMPLE.get(cfg.model, _DEFAULT_RATE)
    n_train, n_eval = _run_units(technique, size, cfg)
    return n_train * train_rate + n_eval * eval_rate + 2.0


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds, per technique and training size.

    The per-epoch time ratio compares each technique with ``full`` at the same size
    (``None`` when full was not run).
    """
    if not rows:
        raise ValueError("summarize needs at least one result row.")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["technique"], int(row["train_size"])), []).append(row)
    full_epoch = {size: np.mean([float(r["epoch_seconds"]) for r in rs])
                  for (t, size), rs in groups.items() if t == "full"}
    order = list(dict.fromkeys(r["technique"] for r in rows))
    summary = []
    for (technique, size), rs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        acc, acc_sd = _mean_std([float(r["test_accuracy"]) for r in rs])
        val, val_sd = _mean_std([float(r["val_accuracy"]) for r in rs])
        epoch = float(np.mean([float(r["epoch_seconds"]) for r in rs]))
        trainable = rs[0].get("trainable_parameters")
        total = rs[0].get("total_parameters")
        summary.append({
            "technique": technique, "train_size": size, "seeds": len(rs),
            "test_accuracy_mean": acc, "test_accuracy_std": acc_sd,
            "test_accuracy_min": min(float(r["test_accuracy"]) for r in rs),
            "test_accuracy_max": max(float(r["test_accuracy"]) for r in rs),
            "val_accuracy_mean": val, "val_accuracy_std": val_sd,
            "train_seconds_mean": float(np.mean([float(r["train_seconds"]) for r in rs])),
            "epoch_seconds_mean": epoch,
            "epoch_time_ratio_to_full": epoch / full_epoch[size] if size in full_epoch else None,
            "trainable_parameters": int(trainable) if trainable not in (None, "") else None,
            "trainable_share": (int(trainable) / int(total)) if trainable not in (None, "") and total not in (None, "")
            else None,
        })
    return summary


def summary_markdown(summary: list[dict]) -> str:
    """The summary as a Markdown table (accuracy as mean ± std over seeds)."""
    header = ("| technique | train size | seeds | test accuracy (mean ± std) | min-max | val accuracy | "
              "train time (s) | s/epoch | epoch time vs full | trainable params |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for s in summary:
        ratio = "-" if s["epoch_time_ratio_to_full"] is None else f"{s['epoch_time_ratio_to_full']:.2f}x"
        params = "-" if s["trainable_parameters"] is None else f"{s['trainable_parameters']:,}"
        if s["trainable_share"] is not None:
            params += f" ({100 * s['trainable_share']:.2f}%)"
        lines.append(
            f"| {s['technique']} | {s['train_size']} | {s['seeds']} | {s['test_accuracy_mean']:.3f} ± "
            f"{s['test_accuracy_std']:.3f} | {s['test_accuracy_min']:.3f}-{s['test_accuracy_max']:.3f} | "
            f"{s['val_accuracy_mean']:.3f} | {s['train_seconds_mean']:.0f} | {s['epoch_seconds_mean']:.1f} | "
            f"{ratio} | {params} |")
    return "\n".join(lines) + "\n"


def _write_summary(summary: list[dict], cfg: CompareConfig, out: Path) -> None:
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    intro = (f"# {cfg.model} on {cfg.dataset}\n\nTest accuracy over seeds {cfg.seeds} (each run touches its "
             f"test set of {cfg.test_size} once; validation {cfg.val_size}); {cfg.epochs} epochs, base lr "
             f"{cfg.lr}, batch {cfg.batch_size}. Times include validation after each epoch.\n\n")
    (out / "summary.md").write_text(intro + summary_markdown(summary))


def plot_accuracy_vs_train_size(summary: list[dict], ax=None):
    """Data efficiency: mean test accuracy (± std over seeds) against training size, per technique."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for technique in dict.fromkeys(s["technique"] for s in summary):
        ss = [s for s in summary if s["technique"] == technique]
        ax.errorbar([s["train_size"] for s in ss], [s["test_accuracy_mean"] for s in ss],
                    yerr=[s["test_accuracy_std"] for s in ss], marker="o", capsize=3, label=technique)
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.legend()
    ax.figure.tight_layout()
    return ax


def plot_times(summary: list[dict], ax=None):
    """Training time per technique and per-epoch time relative to full fine-tuning (largest size)."""
    import matplotlib.pyplot as plt

    size = max(s["train_size"] for s in summary)
    ss = [s for s in summary if s["train_size"] == size]
    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [s["technique"] for s in ss]
    ax[0].barh(names, [s["train_seconds_mean"] for s in ss])
    ax[0].set_xlabel(f"training time (s), {size} examples")
    ratios = [s["epoch_time_ratio_to_full"] or 0.0 for s in ss]
    ax[1].barh(names, ratios)
    ax[1].axvline(1.0, color="grey", linestyle="--")
    ax[1].set_xlabel("time per epoch / full fine-tuning's")
    for a in ax:
        a.invert_yaxis()
    ax[0].figure.tight_layout()
    return ax


def _save_plots(summary: list[dict], out: Path) -> None:
    import matplotlib

    if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_accuracy_vs_train_size(summary)
    ax.figure.savefig(out / "accuracy_vs_train_size.png", dpi=110)
    plt.close(ax.figure)
    ax = plot_times(summary)
    ax[0].figure.savefig(out / "time_per_technique.png", dpi=110)
    plt.close(ax[0].figure)
