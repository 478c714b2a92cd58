"""The seven steps end to end: what ``ftlib finetune`` runs.

1. choose a model  2. prepare the data  3. load the weights  4. modify the model
5. set hyperparameters  6. train while monitoring  7. evaluate on the test set, once.

Each step prints what it did; the run writes ``metrics.json`` and PNG plots into an
output folder. This module only wires the steps together: every piece lives in the
module of its step.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ftlib import arguments
from ftlib.config import GENERATIVE_FULL_LR, JOBS, job_defaults
from ftlib.reporting import allocator, device_report, peak_memory_mb, save_run_plots

__all__ = ["FinetuneConfig", "finetune", "build_loaders"]


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run; ``None`` means the default of the task's job (``ftlib.config``)."""

    task: str = "text"
    model: str | None = None
    dataset: str | None = None
    technique: str | None = None
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0
    max_length: int | None = None
    image_size: int | None = None
    out: str | None = None
    allow_download: bool = False
    progress: bool = True
    technique_options: dict = field(default_factory=dict)  # e.g. {"alpha": 0.01} for l2sp
    # "auto" (bf16 or fp16 where the hardware runs it natively, see ftlib.devices), "fp32", "bf16", "fp16"
    precision: str | None = None
    # Your own data instead of a registered data set (see ftlib.data.files); None sizes there
    # mean whole splits.
    data: str | None = None
    val_data: str | None = None
    test_data: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    group_column: str | None = None
    merge: bool = False  # LoRA: also save the adapter merged into the model
    # With the seed, deterministic GPU kernels (identical re-runs, slower); no effect on a CPU.
    deterministic: bool = True

    def resolved(self) -> "FinetuneConfig":
        """Fill in defaults and validate every field, with messages naming the option."""
        from ftlib.data import DATASETS
        from ftlib.models import get_model_spec

        arguments.one_of(self.task, "task", sorted(JOBS))
        values = asdict(self)
        if self.data is not None:  # the task follows from the data: a folder of images or a table of texts
            values["task"] = _data_task(self.data)
            values["dataset"] = values["dataset"] or Path(self.data).stem or "data"
        elif self.model is not None and self.task == "text":  # a generative model implies its task
            task = get_model_spec(self.model, allow_download=self.allow_download).task
            values["task"] = "text generation" if task == "text generation" else self.task
        # The task's job; on a registered data set, its budget too (sizes, epochs, batch size).
        job = JOBS[values["task"]] if self.data is not None else job_defaults(values["task"], values["dataset"])
        for key, default in job.items():
            if values[key] is None:
                values[key] = default
        cfg = FinetuneConfig(**values)
        spec = get_model_spec(cfg.model, allow_download=cfg.allow_download,
                              task="text generation" if cfg.task == "text generation" else "text")
        if cfg.data is not None:
            if spec.task != cfg.task:
                what = "a folder of images" if cfg.task == "image" else "a table of texts"
                raise ValueError(f"Model {cfg.model!r} is a {spec.task} model but --data {cfg.data} is {what}; "
                                 f"pick a {cfg.task} model (see `ftlib models`).")
            return _check_numbers(cfg, optional_sizes=True)
        if cfg.dataset not in DATASETS:
            raise ValueError(f"Unknown dataset {cfg.dataset!r}. Known datasets: {', '.join(DATASETS)}.")
        data_spec = DATASETS[cfg.dataset]
        if cfg.task == "text generation":
            return _resolve_generation(cfg, spec, data_spec)
        if spec.task != data_spec.task:
            raise ValueError(f"Model {cfg.model!r} is a {spec.task} model but dataset {cfg.dataset!r} is a "
                             f"{data_spec.task} task; pick a {data_spec.task} model (see `ftlib models`).")
        return _check_numbers(cfg, optional_sizes=False)


def _data_task(path: str) -> str:
    """"image" for a folder (one sub-folder per class), "text" for a file."""
    p = Path(path)
    if not p.exists():
        raise arguments.ArgumentError("data", "must be an existing file or folder", path)
    return "image" if p.is_dir() else "text"


def _check_numbers(cfg: FinetuneConfig, *, optional_sizes: bool) -> FinetuneConfig:
    for key in ("train_size", "val_size", "test_size", "epochs", "batch_size", "max_length"):
        value = getattr(cfg, key)
        if value is None and optional_sizes and key.endswith("_size"):
            continue
        arguments.integer(value, key)
    arguments.number(cfg.lr, "lr")
    from ftlib.devices import PRECISIONS

    arguments.one_of(cfg.precision, "precision", PRECISIONS)
    if cfg.image_size is not None and (cfg.image_size < 32 or cfg.image_size % 32):
        raise arguments.ArgumentError("image_size", "must be a multiple of 32 (64, 96, 224...)", cfg.image_size)
    from ftlib.techniques import TECHNIQUES

    arguments.one_of(cfg.technique, "technique", sorted(TECHNIQUES))
    return cfg


def _resolve_generation(cfg: FinetuneConfig, spec, data_spec) -> FinetuneConfig:
    from ftlib.pipeline_llm import INSTRUCTIONS

    if spec.task != "text generation":
        raise ValueError(f"Model {cfg.model!r} is a {spec.task} model; the text generation task needs a generative "
                         "one (see `ftlib models`).")
    if cfg.dataset not in INSTRUCTIONS:
        raise ValueError(f"Dataset {cfg.dataset!r} has no instruction framing; generative models are fine-tuned on "
                         f"{', '.join(INSTRUCTIONS)}.")
    if cfg.technique not in ("lora", "full"):
        raise arguments.ArgumentError("technique", "must be 'lora' or 'full' for a generative model", cfg.technique)
    arguments.one_of(cfg.precision, "precision", ("auto", "bf16", "fp32"))
    if cfg.technique == "full" and cfg.lr == JOBS["text generation"]["lr"]:
        cfg.lr = GENERATIVE_FULL_LR
    for key in ("train_size", "val_size", "test_size", "epochs", "batch_size", "max_length"):
        arguments.integer(getattr(cfg, key), key)
    arguments.number(cfg.lr, "lr")
    return cfg


def build_loaders(cfg: FinetuneConfig, splits, tokenizer=None):
    """Train (shuffled, seeded), validation and test loaders for ``cfg``.

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


def finetune(config: FinetuneConfig | None = None, *, log: Callable[[str], None] = print, **options) -> dict:
    """Run the seven steps and return the metrics (also written to ``<out>/metrics.json``).

    Pass a :class:`FinetuneConfig` or its fields as keyword arguments, e.g.
    ``finetune(task="image", train_size=500)``.
    """
    from ftlib import data as data_mod
    from ftlib.evaluate import HeldOutTest
    from ftlib.freezing import trainable_summary
    from ftlib.models import get_model_spec, load_model, load_tokenizer
    from ftlib.devices import is_main_process
    from ftlib.techniques import TECHNIQUES
    from ftlib.train import set_seed

    cfg = (config or FinetuneConfig(**options)).resolved()
    if cfg.task == "text generation":
        from ftlib.pipeline_llm import finetune_llm

        return finetune_llm(cfg, log=log)
    started = time.perf_counter()
    main = is_main_process()  # under `accelerate launch` every process trains; one writes and prints
    log = log if main else (lambda *_: None)
    out = Path(cfg.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.replace('/', '_')}-{cfg.dataset}-{cfg.technique}")
    if main:
        out.mkdir(parents=True, exist_ok=True)

    spec = get_model_spec(cfg.model, allow_download=cfg.allow_download)
    log(f"[1/7] Model: {spec.name} - {spec.description}; {spec.num_parameters} parameters; "
        f"input {spec.input_size}; weights: {spec.source}")

    if cfg.data is not None:
        from ftlib.data.files import load_splits

        raw, splits = load_splits(cfg.data, val_path=cfg.val_data, test_path=cfg.test_data, seed=cfg.seed,
                                  train_size=cfg.train_size, val_size=cfg.val_size, test_size=cfg.test_size,
                                  text_column=cfg.text_column, label_column=cfg.label_column,
                                  group_column=cfg.group_column)
    else:
        raw = data_mod.load_dataset(cfg.dataset)
        splits = data_mod.split_dataset(raw, train_size=cfg.train_size, val_size=cfg.val_size,
                                        test_size=cfg.test_size, seed=cfg.seed)
    tokenizer = load_tokenizer(cfg.model, allow_download=cfg.allow_download) if spec.task == "text" else None
    train_loader, val_loader, test_loader = build_loaders(cfg, splits, tokenizer)
    log(f"[2/7] Data: {cfg.dataset}, {len(raw):,} examples, classes {raw.class_names}; split (deduplicated, "
        f"stratified{_grouping(cfg, raw)}, seed {cfg.seed}) into "
        f"train {len(splits.train)} / validation {len(splits.val)} / test {len(splits.test)}")

    set_seed(cfg.seed)  # the new head's initial weights depend on it
    num_classes = len(raw.class_names)
    model, report = load_model(cfg.model, num_classes, allow_download=cfg.allow_download, return_report=True)
    log("[3/7] Weights: " + (report.describe().replace("\n", "\n      ") if report else "random initialisation (no pretrained weights)"))
    log(f"[4/7] Head: new {num_classes}-class classifier; {trainable_summary(model)}")

    technique = TECHNIQUES[cfg.technique]
    log(f"[5/7] Hyperparameters: technique {cfg.technique} ({technique.description}); lr {cfg.lr}, "
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, AdamW, weight decay 0.01 (not on biases/norms), "
        f"linear warmup 10% then decay")
    log(f"[6/7] Training on {len(splits.train)} examples ({len(train_loader)} batches per epoch)...")
    result = technique.run(model, train_loader, val_loader, cfg)
    history = result["history"]
    for e in history.to_list() if not cfg.progress else []:  # with progress, fit has printed them
        log(f"      epoch {e['epoch'] + 1}: train loss {e['train_loss']:.4f} acc {e['train_accuracy']:.3f} | "
            f"val loss {e['val_loss']:.4f} acc {e['val_accuracy']:.3f} | {e['seconds']:.1f}s")
    model = result.get("model", model)

    test = HeldOutTest(test_loader, raw.class_names)
    metrics_test = result["test"](test) if "test" in result else test.evaluate(model, progress=cfg.progress)
    low, high = metrics_test["accuracy_95ci"]
    log(f"[7/7] Test (touched once, {metrics_test['num_examples']} examples): accuracy {metrics_test['accuracy']:.4f} "
        f"(95% CI {low:.3f}-{high:.3f}), macro F1 {metrics_test['macro_f1']:.4f}")

    from ftlib.techniques.features import ProbeModel
    from ftlib.saving import save_finetuned

    image_size = cfg.image_size or spec.image_size or 96
    folder = None  # feature extraction: a scikit-learn classifier on frozen features, no format to save it in yet
    if main and not isinstance(model, ProbeModel):
        folder = save_finetuned(model, out / "model", model_name=cfg.model, class_names=raw.class_names,
                                tokenizer=tokenizer, max_length=cfg.max_length, image_size=image_size,
                                merge=cfg.merge)
    metrics = {
        "model": cfg.model, "dataset": cfg.dataset, "task": cfg.task, "technique": cfg.technique,
        "train_size": len(splits.train), "val_size": len(splits.val), "test_size": len(splits.test),
        "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
        "best_epoch": history.best_epoch, "history": history.to_list(), "test": metrics_test,
        "trainable_parameters": result.get("trainable_parameters"), "precision": history.precision,
        "deterministic": cfg.deterministic,
        "total_seconds": time.perf_counter() - started, "peak_memory_mb": peak_memory_mb(),
        "allocator": allocator(), **device_report(),
        "class_names": raw.class_names, "data": cfg.data, "model_path": str(folder) if folder else None,
    }
    if not main:
        return {**metrics, "out": str(out)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_run_plots(history, metrics_test, raw.class_names, out)
    log(f"Done in {metrics['total_seconds']:.0f}s (peak memory {metrics['peak_memory_mb']:.0f} MB). "
        f"Results: {out / 'metrics.json'}, plots: {out / 'learning_curves.png'}, {out / 'confusion_matrix.png'}")
    if folder is None:
        log("Model not saved: feature extraction keeps a scikit-learn classifier on the frozen backbone's "
            "features, which ftlib cannot save yet; the other techniques keep their model in RUN/model.")
    else:
        _show_model(cfg, spec, model, tokenizer, image_size, folder, raw, splits, log)
    metrics["out"] = str(out)
    return metrics


def _grouping(cfg: FinetuneConfig, raw) -> str:
    if raw.groups is None:
        return ""
    return ", grouped by movie" if cfg.data is None else f", grouped by {cfg.group_column or 'group'}"


# Two reviews the user can read the answer to at once, for the registered review data.
_EXAMPLES = {"rotten-tomatoes": ["A warm, funny and beautifully acted film.",
                                 "Two hours of my life I will never get back."]}


def _ftlib_command() -> str:
    """How to call ftlib from here: this environment's script (``.venv/bin/ftlib``), else ``ftlib``."""
    script = Path(sys.executable).parent / "ftlib"
    if not script.exists():
        return "ftlib"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)


def _show_model(cfg: FinetuneConfig, spec, model, tokenizer, image_size, folder: Path, raw, splits, log) -> None:
    """Where the model is, the command to use it, and its answers to two examples (the last lines)."""
    import shlex

    from ftlib.saving import Finetuned, read_manifest

    loadable = "weights" in read_manifest(folder) and spec.task == "text"
    log(f"Model saved in {folder}" + (" (transformers.pipeline(\"text-classification\", model=...) reads it too)"
                                       if loadable else ""))
    command = _ftlib_command()
    if spec.task == "text":
        examples = (_EXAMPLES.get(cfg.dataset) if cfg.data is None else None) or \
            [" ".join(t.split()[:16]) for t in splits.test.inputs[:2]]
        log("Try it: " + shlex.join([command, "predict", str(folder), *examples]))
    else:
        examples = list(splits.test.inputs[:2])
        log(f"Try it: {shlex.join([command, 'predict', str(folder)])} IMAGE_FILE_OR_FOLDER ...")
    kept = Finetuned(model, spec.task, list(raw.class_names), tokenizer, cfg.max_length, image_size,
                     spec.mean or (0.5,) * 3, spec.std or (0.5,) * 3)
    for i, result in enumerate(kept.predict(examples)):
        shown = examples[i] if spec.task == "text" else f"test image {i + 1} (a {raw.class_names[splits.test.labels[i]]})"
        log(f"  {result['label']} ({result['probability']:.2f}): {shown}")
