"""Every default of a run, in one place: what ``ftlib finetune`` and ``ftlib compare`` run
when an option is not given.

A run's settings are a :class:`FinetuneConfig` (``ftlib compare``'s grid: ``ftlib.compare.CompareConfig``);
``FinetuneConfig.resolved()`` fills every ``None`` field from here, in this order, and validates
the whole with messages that name the field:

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

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftlib import arguments

__all__ = ["FinetuneConfig", "JOBS", "DATA_BUDGETS", "PREFERENCE", "PREFERENCE_TECHNIQUES", "GENERATIVE_TECHNIQUES", "DEFAULT_SIZES", "INSTRUCTIONS", "GENERATION_BATCH_SIZE", "COMPARE",
           "COMPARE_QUICK", "job_defaults"]

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
# A generative model's techniques: supervised (lora, full), or preference tuning of a LoRA
# adapter (ftlib.pipeline_preference) on pairs.
PREFERENCE_TECHNIQUES = ("dpo", "simpo")
GENERATIVE_TECHNIQUES = ("lora", "full", *PREFERENCE_TECHNIQUES)
# Preference tuning: --data with pairs implies dpo; a batch is one pair (two answers, twice an
# SFT example's tokens) by default.
# sft_weight: the SFT term on the chosen answers (RPO for DPO, CPO-SimPO for SimPO; TRL's rpo_alpha
# and cpo_alpha, 1.0 as in TRL's CPO and the RPO paper). Without it, one epoch at LoRA's 2e-4 won the
# held-out preference and wrecked the headlines (ROUGE-L 0.2558 after SFT, 0.0291 after DPO; with the
# term 0.2471: bench/RESULTS.md, "DPO settings tried on one SFT run").
# activation_checkpointing: a DPO step holds two sequences' activations; recomputing them in the
# backward pass cut the job's peak from 1,542 to 1,292 MB for 1.5x the training time (same log).
# precision: fp32, not the generative job's auto. On a CPU with avx512_bf16 but no AMX (AMD EPYC
# Zen 4), one DPO run (seed 0, the SFT term, checkpointing) under bf16 autocast peaked at 2,522 MB
# and trained in 264 s; in fp32, 1,294 MB and 345 s, the same figures otherwise (bench/RESULTS.md,
# "Preference tuning at bf16 and fp32"). --precision auto or bf16 still chooses bf16.
PREFERENCE = {"technique": "dpo", "batch_size": 1, "sft_weight": 1.0, "activation_checkpointing": True,
              "precision": "fp32"}
PREFERENCE_JOB = {"batch_size": PREFERENCE["batch_size"], "precision": PREFERENCE["precision"]}
# Registered chat data sets whose preference pairs are built by self-play (chosen: the real answer;
# rejected: the starting model's own), as they are for your own instruction data.
SELF_PLAY_DATASETS = ("bbc-headlines",)

# Train / validation / test sizes split off a registered data set, unless its budget says otherwise.
DEFAULT_SIZES = (2000, 500, 2000)
DATA_BUDGETS = {
    # One epoch on (nearly) all 8,951 training reviews beats three on 2,000 and one on
    # 6,000 or 7,400 on validation; batches of 16 score as 32 with ~200 MB less memory
    # (bench/foundation/tune_main_job.py). bf16 where native makes it fit the time.
    "rotten-tomatoes": {"sizes": (8900, 500, 2000), "epochs": 1, "batch_size": 16},
    "bbc-news": {"sizes": (1000, 200, 400)},
    "fashion-mnist": {"sizes": DEFAULT_SIZES},
    # 2,109 distinct articles. The generative job writes a headline for every test article twice
    # (zero-shot and fine-tuned), and its training examples are twice the length of a review's:
    # its own sizes keep a run within minutes on 2 cores, its length fits every article's 60 words.
    "bbc-headlines": {"sizes": (1000, 200, 400),
                      "text generation": {"train_size": 320, "val_size": 50, "test_size": 200, "max_length": 160},
                      # Preference tuning computes two answers per pair: half the examples. The test
                      # articles are the SFT job's (a split's test part depends on its size and seed only).
                      "preference": {"train_size": 160}},
}
# The generative job on a classification data set (ftlib.pipeline_llm): per data set, the
# instruction (the text goes after it) and the answer for each class, in the order of the
# data set's class names. BBC articles are cut to their first words: the topic shows early,
# and a 2-core CPU cannot afford 500-token sequences.
INSTRUCTIONS = {
    "rotten-tomatoes": {"template": "Is this movie review positive or negative? Answer with one word.\n\n"
                                    "Review: {text}",
                        "answers": ["negative", "positive"], "max_words": 120},
    "bbc-news": {"template": "Which topic is this BBC News article about: business, entertainment, politics, "
                             "sport or tech? Answer with one word.\n\nArticle: {text}",
                 "answers": ["business", "entertainment", "politics", "sport", "tech"], "max_words": 60},
}

# Text answers are written (greedy) in batches of this many prompts: a decoding step reads every
# weight once whatever the batch, so wider batches write faster, but hold more memory (SmolLM2,
# 96 BBC prompts, 24 new tokens: batch 8, 16, 32 peaked at 1,029, 1,111 and 1,303 MB and took
# 37, 28 and 22 s on the 2-core Xeon of bench/RESULTS.md).
GENERATION_BATCH_SIZE = 16

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


def job_defaults(task: str, dataset: str | None = None, technique: str | None = None) -> dict:
    """The defaults of ``task``'s job on ``dataset`` (the job's own data set by default):
    :data:`JOBS`, then the data set's budget (sizes, epochs, batch size); for preference
    tuning (``technique`` dpo or simpo), :data:`PREFERENCE_JOB` and the budget's ``"preference"``."""
    job = dict(JOBS[task])
    budget = DATA_BUDGETS.get(dataset or job["dataset"], {})
    sizes = budget.get("sizes", DEFAULT_SIZES)
    if task == "text generation":  # the job's own sizes, or the data set's for this job; a smaller test split caps
        job.update(budget.get("text generation", {}))
        if technique in PREFERENCE_TECHNIQUES:
            job.update(PREFERENCE_JOB)
            job.update(budget.get("preference", {}))
        job["test_size"] = min(job["test_size"], sizes[2])
        return job
    job.update(zip(("train_size", "val_size", "test_size"), sizes))
    job.update({k: budget[k] for k in ("epochs", "batch_size") if k in budget})
    return job


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
    # Preference tuning (technique dpo or simpo): start from this generative LoRA run, its adapter
    # folded into the weights (the reference), instead of the registered model.
    from_run: str | None = None
    # With the seed, deterministic GPU kernels (identical re-runs, slower); no effect on a CPU.
    deterministic: bool = True

    def resolved(self) -> "FinetuneConfig":
        """Fill in defaults and validate every field, with messages naming the option."""
        from ftlib.data import DATASETS
        from ftlib.models import get_model_spec

        arguments.one_of(self.task, "task", sorted(JOBS))
        values = asdict(self)
        if self.data is not None:  # the task follows from the data: images, a table of texts, or instructions
            values["task"] = _data_task(self.data)
            values["dataset"] = values["dataset"] or Path(self.data).stem or "data"
            if _is_pairs(self.data):  # preference pairs: preference tuning
                values["technique"] = values["technique"] or PREFERENCE["technique"]
        elif self.model is not None and self.task == "text":  # a generative model implies its task
            task = get_model_spec(self.model, allow_download=self.allow_download).task
            values["task"] = "text generation" if task == "text generation" else self.task
        # The task's job; on a registered data set, its budget too (sizes, epochs, batch size).
        # Your own data is split whole unless sizes are given.
        if self.data is not None:
            job = {k: v for k, v in JOBS[values["task"]].items() if k not in ("train_size", "val_size", "test_size")}
            job.update(PREFERENCE_JOB if values["technique"] in PREFERENCE_TECHNIQUES else {})
        else:
            job = job_defaults(values["task"], values["dataset"], values["technique"])
        for key, default in job.items():
            if values[key] is None:
                values[key] = default
        cfg = FinetuneConfig(**values)
        spec = get_model_spec(cfg.model, allow_download=cfg.allow_download,
                              task="text generation" if cfg.task == "text generation" else "text")
        if cfg.data is not None:
            if spec.task == "text generation" and cfg.task == "text":
                raise ValueError(f"Model {cfg.model!r} is a generative model: it needs instruction data (a JSON Lines "
                                 f"or CSV file with prompt and completion, messages, or instruction and output "
                                 f"columns), but --data {cfg.data} is a table of texts and labels; pick a text model "
                                 "(see `ftlib models`) or give instruction data.")
            if spec.task != cfg.task:
                what = {"image": "a folder of images", "text": "a table of texts",
                        "text generation": "instruction data (prompts and answers)"}[cfg.task]
                raise ValueError(f"Model {cfg.model!r} is a {spec.task} model but --data {cfg.data} is {what}; "
                                 f"pick a {cfg.task} model (see `ftlib models`).")
            if cfg.task == "text generation":
                return _resolve_generation(cfg, spec, None)
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
    """"image" for a folder (one sub-folder per class), "text generation" for instruction data
    or preference pairs (``ftlib.data.chats``, ``ftlib.data.pairs``), "text" for another file
    (a table of texts and labels)."""
    from ftlib.data.chats import looks_like_chats

    p = Path(path)
    if not p.exists():
        raise arguments.ArgumentError("data", "must be an existing file or folder", path)
    if p.is_dir():
        return "image"
    return "text generation" if looks_like_chats(p) or _is_pairs(p) else "text"


def _is_pairs(path) -> bool:
    from ftlib.data.pairs import looks_like_pairs

    return Path(path).is_file() and looks_like_pairs(path)


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
    """A generative run: on your own instruction data (``data_spec`` None), a registered chat
    data set, or a classification data set framed as instructions (:data:`INSTRUCTIONS`)."""
    if spec.task != "text generation":
        raise ValueError(f"Model {cfg.model!r} is a {spec.task} model; the text generation task needs a generative "
                         "one (see `ftlib models`).")
    if data_spec is not None and data_spec.task != "text generation" and cfg.dataset not in INSTRUCTIONS:
        from ftlib.data import DATASETS

        chats = [name for name, s in DATASETS.items() if s.task == "text generation"]
        raise ValueError(f"Dataset {cfg.dataset!r} has no instruction framing; generative models are fine-tuned on "
                         f"{', '.join([*chats, *INSTRUCTIONS])} or your own instruction data (--data).")
    arguments.one_of(cfg.technique, "technique", GENERATIVE_TECHNIQUES)
    pairs = cfg.data is not None and _is_pairs(cfg.data)
    if cfg.technique in PREFERENCE_TECHNIQUES:
        if cfg.data is None and cfg.dataset not in SELF_PLAY_DATASETS:
            raise arguments.ArgumentError(
                "technique", f"needs preference pairs: --data with prompt, chosen and rejected columns, --data with "
                f"instruction data or --dataset {' or '.join(SELF_PLAY_DATASETS)} (pairs of the real answers and the "
                f"model's own)", cfg.technique)
    elif pairs:
        raise arguments.ArgumentError("technique", f"must be one of {', '.join(PREFERENCE_TECHNIQUES)}: --data "
                                      f"{cfg.data} holds preference pairs", cfg.technique)
    elif cfg.from_run is not None:
        raise arguments.ArgumentError("from_run", f"applies to preference tuning ({', '.join(PREFERENCE_TECHNIQUES)}); "
                                      f"the technique is {cfg.technique}", cfg.from_run)
    if cfg.from_run is not None and not (Path(cfg.from_run) / "adapter" / "adapter_config.json").is_file():
        raise arguments.ArgumentError("from_run", "must be the folder of a generative LoRA run (it holds "
                                      "adapter/adapter_config.json)", cfg.from_run)
    arguments.one_of(cfg.precision, "precision", ("auto", "bf16", "fp32"))
    if cfg.technique == "full" and cfg.lr == JOBS["text generation"]["lr"]:
        cfg.lr = GENERATIVE_FULL_LR
    for key in ("train_size", "val_size", "test_size", "epochs", "batch_size", "max_length"):
        if getattr(cfg, key) is not None or data_spec is not None:  # your own data: None sizes split it whole
            arguments.integer(getattr(cfg, key), key)
    arguments.number(cfg.lr, "lr")
    return cfg
