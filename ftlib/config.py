"""Every default of a run, in one place: what ``ftlib finetune`` and ``ftlib compare`` run
when an option is not given.

A run's settings are a :class:`ftlib.pipeline.FinetuneConfig` (or ``CompareConfig``); a
``None`` field takes its value from here, in this order:

1. :data:`JOBS`: the task's job (``ftlib finetune`` is the "text" job, ``--task image``
   the "image" job, a generative model the "text generation" job);
2. :data:`DATA_BUDGETS`: the budget of the registered data set the run trains on (how many
   examples it splits off, and the epochs and batch size where the task's do not suit it);
3. :data:`COMPARE` / :data:`COMPARE_QUICK`: the grid of ``ftlib compare`` (``--quick``).

The techniques' own options (``--alpha``, ``--lora-rank``...) default to their functions'
keyword defaults, read by the registry in ``ftlib.techniques``. The command line's help
reads everything it shows from these tables.
"""
from __future__ import annotations

__all__ = ["JOBS", "DATA_BUDGETS", "DEFAULT_SIZES", "COMPARE", "COMPARE_QUICK", "job_defaults"]

JOBS = {
    "text": {"model": "minilm-l6", "dataset": "rotten-tomatoes", "technique": "full", "epochs": 3, "lr": 1e-4,
             "batch_size": 32, "max_length": 64, "precision": "auto"},
    "image": {"model": "efficientnet-lite0", "dataset": "fashion-mnist", "technique": "full", "epochs": 3,
              "lr": 1e-3, "batch_size": 32, "max_length": 64, "precision": "fp32"},
    # A generative model answering instructions (ftlib.pipeline_llm); lr is LoRA's.
    "text generation": {"model": "smollm2-135m", "dataset": "rotten-tomatoes", "technique": "lora", "epochs": 1,
                        "lr": 2e-4, "batch_size": 4, "max_length": 128, "train_size": 512, "val_size": 100,
                        "test_size": 500, "precision": "auto"},
}
# Generative full fine-tuning moves every weight: a tenth of LoRA's rate.
GENERATIVE_FULL_LR = 2e-5

# Train / validation / test sizes split off a registered data set, unless its budget says otherwise.
DEFAULT_SIZES = (2000, 500, 2000)
DATA_BUDGETS = {
    # One epoch on (nearly) all 8,951 training reviews beats three on 2,000 and one on
    # 6,000 or 7,400 on validation; batches of 16 score as 32 with ~200 MB less memory
    # (bench/foundation/tune_main_job.py). bf16 where native makes it fit the time.
    "rotten-tomatoes": {"sizes": (8900, 500, 2000), "epochs": 1, "batch_size": 16},
    "bbc-news": {"sizes": (1000, 200, 400)},
    "fashion-mnist": {"sizes": DEFAULT_SIZES},
}

# ftlib compare: sized for about 15 minutes on an idle 2-core CPU (more when the machine is shared).
COMPARE = {
    "text": {"techniques": ["full", "feature-extraction", "lp-ft", "lora"], "train_sizes": [100, 500],
             "seeds": [0, 1, 2], "val_size": 500, "test_size": 1000, "batch_size": 32, "max_length": 64},
    "image": {"techniques": ["scratch", "full", "feature-extraction", "lp-ft"], "train_sizes": [100, 500],
              "seeds": [0, 1, 2], "val_size": 500, "test_size": 1000, "batch_size": 32, "max_length": 64},
}
# ftlib compare --quick: a first look in about 2 minutes.
COMPARE_QUICK = {
    "text": {**COMPARE["text"], "techniques": ["full", "feature-extraction"], "seeds": [0], "val_size": 200,
             "test_size": 500},
    "image": {**COMPARE["image"], "techniques": ["scratch", "full", "feature-extraction"], "seeds": [0],
              "val_size": 200, "test_size": 500},
}


def job_defaults(task: str, dataset: str | None = None) -> dict:
    """The defaults of ``task``'s job on ``dataset`` (the job's own data set by default):
    :data:`JOBS`, then the data set's budget (sizes, epochs, batch size)."""
    job = dict(JOBS[task])
    budget = DATA_BUDGETS.get(dataset or job["dataset"], {})
    sizes = budget.get("sizes", DEFAULT_SIZES)
    if task == "text generation":  # the job's own sizes; a smaller test split caps the test size
        job["test_size"] = min(job["test_size"], sizes[2])
        return job
    job.update(zip(("train_size", "val_size", "test_size"), sizes))
    job.update({k: budget[k] for k in ("epochs", "batch_size") if k in budget})
    return job
