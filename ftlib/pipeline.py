"""The seven steps end to end: what ``ftlib finetune`` runs.

1. choose a model  2. prepare the data  3. load the weights  4. modify the model
5. set hyperparameters  6. train while monitoring  7. evaluate on the test set, once.

Each step prints what it did; the run writes ``metrics.json`` and PNG plots into an
output folder. This module only wires the steps together: every piece lives in the
module of its step.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from ftlib.config import PREFERENCE_TECHNIQUES, FinetuneConfig
from ftlib.runner import Run, build_loaders, run_metrics

__all__ = ["FinetuneConfig", "finetune", "build_loaders"]


def finetune(config: FinetuneConfig | None = None, *, log: Callable[[str], None] = print, **options) -> dict:
    """Run the seven steps and return the metrics (also written to ``<out>/metrics.json``).

    Pass a :class:`FinetuneConfig` or its fields as keyword arguments, e.g.
    ``finetune(task="image", train_size=500)``.
    """
    from ftlib import data as data_mod
    from ftlib.evaluate import HeldOutTest
    from ftlib.freezing import trainable_summary
    from ftlib.models import get_model_spec, load_model, load_tokenizer
    from ftlib.techniques import TECHNIQUES
    from ftlib.train import set_seed

    cfg = (config or FinetuneConfig(**options)).resolved()
    if cfg.task == "text generation" and cfg.technique in PREFERENCE_TECHNIQUES:
        from ftlib.pipeline_preference import finetune_preferences

        return finetune_preferences(cfg, log=log)
    if cfg.task == "text generation":
        from ftlib.pipeline_llm import finetune_llm

        return finetune_llm(cfg, log=log)
    run = Run(cfg.out, f"{cfg.model}-{cfg.dataset}-{cfg.technique}", log)
    log, out = run.log, run.out  # under `accelerate launch` every process trains; one writes and prints

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
    if run.main and not isinstance(model, ProbeModel):
        folder = save_finetuned(model, out / "model", model_name=cfg.model, class_names=raw.class_names,
                                tokenizer=tokenizer, max_length=cfg.max_length, image_size=image_size,
                                merge=cfg.merge)
    metrics = {**run_metrics(cfg, run, splits, history, metrics_test,
                             trainable_parameters=result.get("trainable_parameters"), precision=history.precision),
               "class_names": raw.class_names, "data": cfg.data, "model_path": str(folder) if folder else None}
    metrics = run.finish(metrics, history, metrics_test, raw.class_names)
    if not run.main:
        return metrics
    log(f"Done in {metrics['total_seconds']:.0f}s (peak memory {metrics['peak_memory_mb']:.0f} MB). "
        f"Results: {out / 'metrics.json'}, plots: {out / 'learning_curves.png'}, {out / 'confusion_matrix.png'}")
    if folder is None:
        log("Model not saved: feature extraction keeps a scikit-learn classifier on the frozen backbone's "
            "features, which ftlib cannot save yet; the other techniques keep their model in RUN/model.")
    else:
        _show_model(cfg, spec, model, tokenizer, image_size, folder, raw, splits, log)
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
