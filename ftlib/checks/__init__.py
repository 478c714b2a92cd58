"""Exercise checks of the ftlib course: one contract per exercise, written once.

Each assignment has a module (``ftlib.checks.prepare_data`` for ``02_prepare_data``...)
with one ``check_<function>(learner_function)`` per exercise. The same call is made by
the notebook's grade cell, by the pytest learner suite (``pytest tests/learner
--notebook PATH``) and by the tests of the reference implementation in ``ftlib``.
A check returns ``None`` when the contract holds and raises :class:`CheckFailure` (an
``AssertionError``) with what was expected, what was found and a hint otherwise.
Checks are quiet: no warnings, logging or progress bars reach stderr.
"""
from importlib import import_module

# BNNet: the tiny convnet with BatchNorm that many checks build, for reproducing a failure.
__all__ = ["CheckFailure", "BNNet", "ASSIGNMENTS", "EXERCISES", "get_check"]

# assignment -> checks module
ASSIGNMENTS = {
    "01_choose_model": "choose_model",
    "02_prepare_data": "prepare_data",
    "03_load_weights": "load_weights",
    "04_modify_model": "modify_model",
    "05_hyperparameters": "hyperparameters",
    "06_train_and_monitor": "train_and_monitor",
    "07_evaluate": "evaluate",
    "08_techniques": "techniques",
    "09_llm_finetuning": "llm_finetuning",
    "10_generative_tasks": "generative_tasks",
    "11_preference_tuning": "preference_tuning",
}

# checks module -> exercise names (each has check_<name> and a reference in ftlib)
EXERCISES = {
    "choose_model": ["count_parameters"],
    "prepare_data": ["stratified_split", "prepare_images", "collate_text"],
    "load_weights": ["load_pretrained_weights", "top_k_classes"],
    "modify_model": ["replace_head", "freeze_backbone", "freeze_up_to", "set_frozen_batchnorm_eval"],
    "hyperparameters": ["param_groups", "warmup_cosine"],
    "train_and_monitor": ["train_one_epoch", "evaluate", "EarlyStopping"],
    "evaluate": ["confusion_matrix", "macro_f1", "bootstrap_interval", "select_and_test"],
    "techniques": ["extract_features", "l2sp_penalty"],
    "llm_finetuning": ["build_sft_example", "collate_sft", "causal_lm_loss", "score_choices", "greedy_generate"],
    "generative_tasks": ["build_chat_example", "sample_next_token", "generate_with_cache", "rouge_l"],
    "preference_tuning": ["completion_logprobs", "dpo_loss", "reference_logprobs", "preference_accuracy"],
}


def get_check(module: str, exercise: str):
    """``get_check("prepare_data", "collate_text")`` -> the check function."""
    return getattr(import_module(f"ftlib.checks.{module}"), f"check_{exercise}")


def __getattr__(name):
    # Lazily: `ftlib.checks.remote`, which a grading kernel imports to answer the grader,
    # must not cost it an import of torch.
    if name in ("CheckFailure", "BNNet"):
        return getattr(import_module("ftlib.checks._common"), name)
    if name in EXERCISES:
        return import_module(f"ftlib.checks.{name}")
    raise AttributeError(f"module 'ftlib.checks' has no attribute {name!r}")
