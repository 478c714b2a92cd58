"""The seven steps for a generative model: what ``ftlib finetune --model smollm2-135m`` runs.

A chat model is fine-tuned to answer an instruction about each example ("Is this movie
review positive or negative?" -> "positive"), with the data set's own labels as the
answers. Its accuracy is measured the same way before training (zero-shot: the instruct
model as it comes) and after, by the likelihood of each answer (``ftlib.generative.sft``). The run
writes ``metrics.json`` (the classifier job's schema plus ``zero_shot``, ``precision``,
``trainable_parameters`` and ``forgetting``), ``learning_curves.png``, ``confusion_matrix.png``,
``generations.json`` (greedy replies before and after) and ``adapter/`` (LoRA only).

``forgetting`` is the other side of the trade (:func:`ftlib.generative.forgetting.generative_forgetting`):
the replies to a few general prompts (a fact, a haiku, a spam question...) before and after,
and the perplexity of the base model's replies under the fine-tuned model.
"""
from __future__ import annotations

import time
from typing import Callable

__all__ = ["INSTRUCTIONS", "instruction_prompts", "finetune_llm"]

# Per data set: the instruction (the text goes after it) and the answer for each class,
# in the order of the data set's class names. BBC articles are cut to their first words:
# the topic shows early, and a 2-core CPU cannot afford 500-token sequences.
INSTRUCTIONS = {
    "rotten-tomatoes": {"template": "Is this movie review positive or negative? Answer with one word.\n\n"
                                    "Review: {text}",
                        "answers": ["negative", "positive"], "max_words": 120},
    "bbc-news": {"template": "Which topic is this BBC News article about: business, entertainment, politics, "
                             "sport or tech? Answer with one word.\n\nArticle: {text}",
                 "answers": ["business", "entertainment", "politics", "sport", "tech"], "max_words": 60},
}


def instruction_prompts(dataset: str, texts) -> list[str]:
    """The user turn for each text of ``dataset`` (see :data:`INSTRUCTIONS`)."""
    spec = INSTRUCTIONS[dataset]
    return [spec["template"].format(text=" ".join(str(t).split()[:spec["max_words"]])) for t in texts]


def _precision(choice: str) -> str:
    """``"bf16"`` or ``"fp32"`` on the device the job trains on (``fit``'s default: a GPU if there is one).

    ftlib.devices decides what ``"auto"`` means there. fp16 is not offered: its gradient
    scaling has no place in bf16-stored weights, so an older GPU gets fp32.
    """
    from ftlib.devices import default_device, resolve_precision

    precision = resolve_precision(choice, default_device())
    return "fp32" if precision == "fp16" else precision


def _describe_precision(stored_bf16: bool, autocast: bool) -> str:
    if stored_bf16:
        return "frozen weights stored in bf16, adapters and optimizer in fp32"
    if autocast:
        return "bf16 autocast over fp32 weights"
    return "fp32"


def finetune_llm(cfg, *, log: Callable[[str], None] = print) -> dict:
    """Run the job for a resolved :class:`ftlib.pipeline.FinetuneConfig` of task "text generation"."""
    import torch

    from ftlib.generative import sft
    from ftlib.data import load_dataset, split_dataset
    from ftlib.devices import default_device
    from ftlib.evaluate import held_out_metrics
    from ftlib.generative.forgetting import general_replies, generative_forgetting
    from ftlib.models import count_parameters, get_model_spec, load_causal_lm
    from ftlib.optim import adamw
    from ftlib.runner import Run, run_metrics
    from ftlib.techniques.adapters import GENERATIVE_RANK
    from ftlib.train import fit, set_seed

    run = Run(cfg.out, f"{cfg.model}-{cfg.dataset}-{cfg.technique}", log)
    log, out = run.log, run.out  # under `accelerate launch` every process trains; one writes and prints
    precision = _precision(cfg.precision)
    bf16 = precision == "bf16"

    spec = get_model_spec(cfg.model, allow_download=cfg.allow_download, task="text generation")
    log(f"[1/7] Model: {spec.name} - {spec.description}; {spec.num_parameters} parameters; "
        f"{spec.input_size}; weights: {spec.source}")
    set_seed(cfg.seed)
    # bf16 with LoRA: the frozen weights are stored in bf16 (half the memory, no cast at
    # every step; read straight into bf16, never held in fp32 too) while the adapters and
    # their optimizer stay fp32. Full fine-tuning keeps fp32 weights (AdamW updates in bf16
    # would round most of them away) under autocast.
    stored_bf16 = bf16 and cfg.technique == "lora"
    autocast = bf16 and not stored_bf16
    model, tokenizer = load_causal_lm(cfg.model, allow_download=cfg.allow_download,
                                      dtype=torch.bfloat16 if stored_bf16 else torch.float32)
    model.to(default_device())  # zero-shot scoring runs where fit will train: a GPU if there is one

    raw = load_dataset(cfg.dataset)
    splits = split_dataset(raw, train_size=cfg.train_size, val_size=cfg.val_size, test_size=cfg.test_size,
                           seed=cfg.seed)
    answers = INSTRUCTIONS[cfg.dataset]["answers"]

    def examples(split):
        prompts = instruction_prompts(cfg.dataset, split.inputs)
        return [sft.build_sft_example(tokenizer, p, answers[y], cfg.max_length) for p, y in zip(prompts, split.labels)]

    train_examples, val_examples = examples(splits.train), examples(splits.val)
    test_prompts = instruction_prompts(cfg.dataset, splits.test.inputs)
    mean_tokens = sum(len(e["input_ids"]) for e in train_examples) / len(train_examples)
    log(f"[2/7] Data: {cfg.dataset} as instructions (answers: {', '.join(answers)}); split (grouped, stratified, "
        f"seed {cfg.seed}) into train {len(splits.train)} / validation {len(splits.val)} / test {len(splits.test)}; "
        f"chat template with a short system turn, {mean_tokens:.0f} tokens per training example on average")

    def accuracy_on_test() -> dict:
        y_pred = sft.classify(model, tokenizer, test_prompts, answers, max_length=cfg.max_length,
                              batch_size=16, bf16=autocast, progress=cfg.progress)
        return held_out_metrics(splits.test.labels, y_pred, raw.class_names, seed=cfg.seed)

    shown = test_prompts[:6]
    before = sft.generate(model, tokenizer, shown, max_new_tokens=12)
    general = general_replies(model, tokenizer)  # the base model, before any adapter: what it says in general
    zero_shot = accuracy_on_test()
    log(f"[3/7] Zero-shot (the instruct model as it comes, answer chosen by likelihood): test accuracy "
        f"{zero_shot['accuracy']:.4f}, macro F1 {zero_shot['macro_f1']:.4f}")

    if cfg.technique == "lora":
        r = int(cfg.technique_options.get("r", GENERATIVE_RANK))
        model = sft.add_lora(model, r=r, alpha=2 * r)
        what = f"LoRA r={r}, alpha {2 * r}, on every linear layer of the {model.config.num_hidden_layers} blocks"
    else:
        model.train()
        what = "full fine-tuning (every weight)"
    trainable, total = count_parameters(model)
    log(f"[4/7] Adapt: {what}; {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)")

    log(f"[5/7] Hyperparameters: lr {cfg.lr}, {cfg.epochs} epoch(s), batch {cfg.batch_size}, AdamW, linear warmup "
        f"10% then decay; precision {precision} ({_describe_precision(stored_bf16, autocast)}); "
        f"loss on the answer and end-of-turn tokens only")
    # At most batch_size x 64 tokens per batch: the peak memory of the run stays that of
    # a typical batch (reviews average 64 tokens in the template), not of the longest one.
    train_loader = sft.make_sft_loader(train_examples, tokenizer.pad_token_id, batch_size=cfg.batch_size,
                                       shuffle=True, seed=cfg.seed, max_tokens=64 * cfg.batch_size)
    val_loader = sft.make_sft_loader(val_examples, tokenizer.pad_token_id, batch_size=4 * cfg.batch_size,
                                     max_tokens=4 * 64 * cfg.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    optimizer = adamw([{"params": decay, "weight_decay": 0.01},
                       {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr)
    log(f"[6/7] Training on {len(train_examples)} examples ({len(train_loader)} batches per epoch)...")
    train_start = time.perf_counter()
    from ftlib.devices import Runtime

    # fit keeps a copy of every weight (540 MB) at each best epoch but the last: one epoch copies none.
    history = fit(sft.SFTModel(model, bf16=autocast), train_loader, val_loader, epochs=cfg.epochs, optimizer=optimizer,
                  seed=cfg.seed, runtime=Runtime(deterministic=cfg.deterministic), progress=cfg.progress)
    train_seconds = time.perf_counter() - train_start
    tokens = sum(len(e["input_ids"]) for e in train_examples) * len(history)
    for e in history.to_list():
        log(f"      epoch {e['epoch'] + 1}: train loss {e['train_loss']:.4f} | val loss {e['val_loss']:.4f}, "
            f"next-token accuracy on answers {e['val_accuracy']:.3f} | {e['seconds']:.1f}s")

    test = accuracy_on_test()
    after = sft.generate(model, tokenizer, shown, max_new_tokens=12)
    forgetting = generative_forgetting(model, tokenizer, general)
    low, high = test["accuracy_95ci"]
    log(f"[7/7] Test (fine-tuned, {test['num_examples']} examples): accuracy {test['accuracy']:.4f} (95% CI "
        f"{low:.3f}-{high:.3f}), macro F1 {test['macro_f1']:.4f}; zero-shot was {zero_shot['accuracy']:.4f}")
    same = sum(b == a for b, a in zip(forgetting["replies_before"], forgetting["replies_after"]))
    # Two facts, no verdict: every reply can change (a one-word answer) while the base model's
    # replies stay almost as likely, and the reverse.
    log(f"      general prompts: {same} of {len(forgetting['prompts'])} replies unchanged; perplexity of the base "
        f"model's replies {forgetting['perplexity_before']:.2f} -> {forgetting['perplexity_after']:.2f} "
        f"(x{forgetting['perplexity_after'] / forgetting['perplexity_before']:.2f}; higher: the fine-tuned model "
        f"finds what the base model said less likely)")

    if cfg.technique == "lora" and run.main:
        sft.save_adapter(model, out / "adapter")
    generations = [{"prompt": p, "answer": answers[y], "before": b, "after": a}
                   for p, y, b, a in zip(shown, splits.test.labels, before, after)]
    run.write_json("generations.json", generations)
    metrics = {**run_metrics(cfg, run, splits, history, test, max_length=cfg.max_length, zero_shot=zero_shot,
                             trainable_parameters=trainable, total_parameters=total, precision=precision,
                             train_seconds=train_seconds, train_tokens_per_second=tokens / train_seconds),
               "class_names": raw.class_names, "answers": answers, "threads": torch.get_num_threads(),
               "forgetting": forgetting}
    metrics = run.finish(metrics, history, test, raw.class_names)
    log(f"Done in {metrics['total_seconds']:.0f}s (training {train_seconds:.0f}s, peak memory "
        f"{metrics['peak_memory_mb']:.0f} MB). Results: {out / 'metrics.json'}, {out / 'generations.json'}"
        + (f", adapter: {out / 'adapter'}" if cfg.technique == "lora" else ""))
    return metrics
