"""ftlib: a small reference library for fine-tuning pretrained models, offline on a CPU.

One module per step of the course:

1. ``ftlib.models``   choose a pretrained model (registry, parameter counts)
2. ``ftlib.data``     prepare the data (real data sets, clean splits, batches)
3. ``ftlib.weights``  load the weights and check they loaded
4. ``ftlib.heads``    modify the model (new head, dropout); ``ftlib.freezing`` freezes layers
5. ``ftlib.optim``    hyperparameters (parameter groups, schedules, LR finder)
6. ``ftlib.train``    train while monitoring (``fit``, early stopping)
7. ``ftlib.evaluate`` evaluate on the held-out test set, once

``ftlib.pipeline`` runs the seven steps end to end (``ftlib finetune``). The techniques:
``ftlib.techniques`` (feature extraction, LP-FT, discriminative rates, gradual unfreezing,
L2-SP, LoRA...: the registry behind ``--technique``, one module per technique, label
smoothing too), ``ftlib.forgetting`` and ``ftlib.compare`` (``ftlib compare``). Generative
models: ``ftlib.generative`` (supervised fine-tuning of a chat model, what it forgets). Your own data:
``ftlib.data`` too (a CSV/TSV/JSON Lines file or an image folder); keeping and using the
model: ``ftlib.saving`` (save, reload, predict).
Names are imported lazily so ``import ftlib`` stays cheap (no torch until needed).
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "MODELS": "models", "load_model": "models", "load_tokenizer": "models",
    "count_parameters": "models", "get_model_spec": "models",
    "DATASETS": "data", "load_dataset": "data", "split_dataset": "data",
    "stratified_split": "data", "make_loader": "data", "prepare_images": "data", "collate_text": "data",
    "LengthGroupedBatchSampler": "data",
    "load_data": "data", "inspect_data": "data", "DataError": "data",
    "save_finetuned": "saving", "load_finetuned": "saving",
    "load_pretrained_weights": "weights", "top_k_classes": "weights", "sanity_check_imagenet": "forgetting",
    "replace_head": "heads", "set_dropout": "heads",
    "freeze_backbone": "freezing", "freeze_up_to": "freezing", "unfreeze": "freezing",
    "set_frozen_batchnorm_eval": "freezing", "recalibrate_batchnorm": "freezing", "GradualUnfreezing": "freezing",
    "freeze_bottom": "freezing", "trainable_summary": "freezing",
    "param_groups": "optim", "adamw": "optim", "make_scheduler": "optim", "lr_range_test": "optim",
    "fit": "train", "train_one_epoch": "train", "EarlyStopping": "train",
    "Runtime": "devices",
    "HeldOutTest": "evaluate", "confusion_matrix": "evaluate", "macro_f1": "evaluate",
    "finetune": "pipeline",
    "extract_features": "techniques.features", "fit_classifier": "techniques.features",
    "ProbeModel": "techniques.features", "l2sp_penalty": "techniques.l2sp",
    "TECHNIQUES": "techniques", "feature_extraction": "techniques", "lp_ft": "techniques", "linear_probe": "techniques",
    "discriminative": "techniques", "gradual_unfreezing": "techniques", "train_l2sp": "techniques", "lora": "techniques",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"ftlib.{_EXPORTS[name]}"), name)
    if not name.startswith("_"):  # a submodule: `from ftlib import evaluate` is always the module
        try:
            return import_module(f"ftlib.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"ftlib.{name}":
                raise
    raise AttributeError(f"module 'ftlib' has no attribute {name!r}")
