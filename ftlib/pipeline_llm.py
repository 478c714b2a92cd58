"""The seven steps for a generative model: what ``ftlib finetune --model smollm2-135m`` runs.

Two jobs, by what the answers are:

* **Classes** (``rotten-tomatoes``, ``bbc-news``): a chat model is fine-tuned to answer an
  instruction about each example ("Is this movie review positive or negative?" ->
  "positive"), with the data set's own labels as the answers. Its accuracy is measured the
  same way before training (zero-shot: the instruct model as it comes) and after, by the
  likelihood of each answer (``ftlib.generative.sft``). The run writes ``metrics.json``
  (the classifier job's schema plus ``zero_shot``, ``precision``, ``trainable_parameters``
  and ``forgetting``), ``learning_curves.png``, ``confusion_matrix.png`` and
  ``generations.json`` (greedy replies before and after).
* **Text** (``bbc-headlines``, or your own instruction data with ``--data``: prompt and
  completion, conversations, or Alpaca's instruction/input/output, see ``ftlib.data.chats``):
  the model learns every assistant reply of each conversation
  (``ftlib.generative.chat.build_chat_example``) and is measured by what it *writes* for
  held-out prompts, before and after: ROUGE-1/2/L F1 against the reference replies, a 95%
  bootstrap interval of ROUGE-L and of its gain, and the lengths of what it writes and of
  the references (``ftlib.generative.metrics``). ``examples.json`` holds them side by side.

Both write ``adapter/`` (LoRA; loadable with peft) and, with ``--merge``, ``merged/``: the
adapter folded into the weights, with the tokenizer and its chat template, a folder that
``transformers.pipeline("text-generation", model=...)`` loads with no ftlib code.

``forgetting`` is the other side of the trade (:func:`ftlib.generative.forgetting.generative_forgetting`):
the replies to a few general prompts (a fact, a haiku, a spam question...) before and after,
and the perplexity of the base model's replies under the fine-tuned model.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from ftlib.config import GENERATION_BATCH_SIZE, INSTRUCTIONS

__all__ = ["INSTRUCTIONS", "instruction_prompts", "finetune_llm", "GenerativeJob", "chat_splits", "with_system",
           "text_scores", "short"]

# A training batch holds at most batch size x this many tokens (a review averages 64 in the
# chat template; a BBC headline example, 120, makes batches of fewer rows).
TOKENS_PER_ROW = 64
# Text answers: each example gets the reply's longest length in training plus this many
# tokens to write, at most REPLY_TOKENS_CAP (a run's evaluation time grows with it).
REPLY_TOKENS_MARGIN = 8
REPLY_TOKENS_CAP = 256
EXAMPLES_SHOWN = 3  # side by side in the log (examples.json holds every test example)


def instruction_prompts(dataset: str, texts) -> list[str]:
    """The user turn for each text of ``dataset`` (see :data:`INSTRUCTIONS`)."""
    spec = INSTRUCTIONS[dataset]
    return [spec["template"].format(text=" ".join(str(t).split()[:spec["max_words"]])) for t in texts]


def answers_text(cfg) -> bool:
    """Whether ``cfg``'s data has text answers (instruction data) rather than classes."""
    from ftlib.data import DATASETS

    return cfg.data is not None or DATASETS[cfg.dataset].task == "text generation"


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


class GenerativeJob:
    """What the generative jobs share: the model (step 1), the adapters (4), training (5, 6) and saving.

    ``adapter_from``: a run folder whose LoRA adapter is folded into the weights first (the
    starting model of preference tuning after SFT).
    """

    def __init__(self, cfg, log: Callable[[str], None], *, adapter_from: str | None = None) -> None:
        import torch

        from ftlib.devices import default_device
        from ftlib.models import get_model_spec, load_causal_lm
        from ftlib.runner import Run
        from ftlib.train import set_seed

        self.cfg = cfg
        self.run = Run(cfg.out, f"{cfg.model}-{cfg.dataset}-{cfg.technique}", log)
        self.log = self.run.log  # under `accelerate launch` every process trains; one writes and prints
        self.precision = _precision(cfg.precision)
        bf16 = self.precision == "bf16"
        spec = get_model_spec(cfg.model, allow_download=cfg.allow_download, task="text generation")
        context = spec.input_size.split(" (")[0]  # the registry's own "(N used here)" is the default's
        self.log(f"[1/7] Model: {spec.name} - {spec.description}; {spec.num_parameters} parameters; "
                 f"{context} ({cfg.max_length} used here); weights: {spec.source}")
        set_seed(cfg.seed)
        # bf16 with LoRA: the frozen weights are stored in bf16 (half the memory, no cast at
        # every step; read straight into bf16, never held in fp32 too) while the adapters and
        # their optimizer stay fp32. Full fine-tuning keeps fp32 weights (AdamW updates in bf16
        # would round most of them away) under autocast.
        self.lora = cfg.technique != "full"  # lora, and preference tuning, which trains a LoRA adapter
        self.stored_bf16 = bf16 and self.lora
        self.autocast = bf16 and not self.stored_bf16
        self.model, self.tokenizer = load_causal_lm(cfg.model, allow_download=cfg.allow_download,
                                                    dtype=torch.bfloat16 if self.stored_bf16 else torch.float32)
        self.model_tag = cfg.model
        if adapter_from is not None:
            from ftlib.generative import sft

            adapter = Path(adapter_from) / "adapter"
            if not (adapter / "adapter_config.json").is_file():
                raise ValueError(f"--from {adapter_from}: no LoRA adapter there ({adapter}/adapter_config.json); "
                                 "give the folder of a LoRA run of this model.")
            self.model = sft.merge_lora(sft.load_adapter(self.model, adapter))
            digest = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
            self.model_tag = f"{cfg.model} + {adapter} ({digest})"
            self.log(f"      starting from {adapter_from}: its adapter folded into the weights")
        self.model.to(default_device())  # zero-shot scoring runs where fit will train: a GPU if there is one

    def adapt(self) -> None:
        """Step 4: LoRA adapters on every linear layer of the blocks, or every weight trainable."""
        from ftlib.generative import sft
        from ftlib.models import count_parameters
        from ftlib.techniques.adapters import GENERATIVE_RANK

        if self.lora:
            r = int(self.cfg.technique_options.get("r", GENERATIVE_RANK))
            self.model = sft.add_lora(self.model, r=r, alpha=2 * r)
            what = f"LoRA r={r}, alpha {2 * r}, on every linear layer of the {self.model.config.num_hidden_layers} blocks"
        else:
            self.model.train()
            what = "full fine-tuning (every weight)"
        self.trainable, self.total = count_parameters(self.model)
        self.log(f"[4/7] Adapt: {what}; {self.trainable:,} of {self.total:,} parameters trainable "
                 f"({100 * self.trainable / self.total:.2f}%)")

    def train(self, train_examples: list[dict], val_examples: list[dict], *, learned: str, answers: str):
        """Steps 5 and 6 of SFT: one length group per batch of at most ``batch_size x TOKENS_PER_ROW`` tokens;
        each epoch is logged with its next-token accuracy on the ``answers``."""
        from ftlib.generative import sft

        cfg = self.cfg
        # A token budget per batch: the peak memory of the run stays that of a typical batch, not
        # of the longest one; longer examples make batches of fewer rows.
        train_loader = sft.make_sft_loader(train_examples, self.tokenizer.pad_token_id, batch_size=cfg.batch_size,
                                           shuffle=True, seed=cfg.seed, max_tokens=TOKENS_PER_ROW * cfg.batch_size)
        val_loader = sft.make_sft_loader(val_examples, self.tokenizer.pad_token_id, batch_size=4 * cfg.batch_size,
                                         max_tokens=4 * TOKENS_PER_ROW * cfg.batch_size)
        history = self.train_on(sft.SFTModel(self.model, bf16=self.autocast), train_loader, val_loader,
                                learned=f"loss on {learned} only")
        self.tokens_per_second = sum(len(e["input_ids"]) for e in train_examples) * len(history) / self.train_seconds
        for e in history.to_list():
            self.log(f"      epoch {e['epoch'] + 1}: train loss {e['train_loss']:.4f} | val loss {e['val_loss']:.4f}, "
                     f"next-token accuracy on {answers} {e['val_accuracy']:.3f} | {e['seconds']:.1f}s")
        return history

    def train_on(self, model, train_loader, val_loader, *, learned: str, loss_fn=None):
        """Steps 5 and 6: AdamW (decay on weight matrices only), linear warmup then decay, ``fit``."""
        from ftlib.devices import Runtime
        from ftlib.optim import adamw
        from ftlib.train import fit

        cfg = self.cfg
        self.log(f"[5/7] Hyperparameters: lr {cfg.lr}, {cfg.epochs} epoch(s), batch {cfg.batch_size}, AdamW, linear "
                 f"warmup 10% then decay; precision {self.precision} "
                 f"({_describe_precision(self.stored_bf16, self.autocast)}); {learned}")
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = adamw([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
                           {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr)
        self.log(f"[6/7] Training ({len(train_loader)} batches per epoch)...")
        start = time.perf_counter()
        # fit keeps a copy of every weight (540 MB) at each best epoch but the last: one epoch copies none.
        history = fit(model, train_loader, val_loader, epochs=cfg.epochs, optimizer=optimizer, loss_fn=loss_fn,
                      seed=cfg.seed, runtime=Runtime(deterministic=cfg.deterministic), progress=cfg.progress)
        self.train_seconds = time.perf_counter() - start
        self.tokens_per_second = None
        return history

    def max_new_tokens(self, references) -> int:
        """New tokens to write for an answer: the longest reference's, plus a margin, capped."""
        longest = max(len(self.tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in references)
        return min(longest + REPLY_TOKENS_MARGIN, REPLY_TOKENS_CAP)

    def save(self) -> list[str]:
        """The adapter (LoRA) and, with ``--merge``, the merged model with its tokenizer; what was written.

        Merging folds the adapter into this job's model: call it last.
        """
        from ftlib.generative import sft

        out, written = self.run.out, []
        if self.lora and self.run.main:
            sft.save_adapter(self.model, out / "adapter")
            written.append(f"adapter: {out / 'adapter'}")
        if self.cfg.merge and self.run.main:
            model = sft.merge_lora(self.model) if self.lora else self.model
            sft.save_for_pipeline(model, self.tokenizer, out / "merged")
            written.append(f"merged model: {out / 'merged'}")
        return written

    def metrics(self, splits, history, test: dict, **extra) -> dict:
        import torch

        from ftlib.runner import run_metrics

        return run_metrics(self.cfg, self.run, splits, history, test, max_length=self.cfg.max_length,
                           trainable_parameters=self.trainable, total_parameters=self.total,
                           precision=self.precision, train_seconds=self.train_seconds,
                           train_tokens_per_second=self.tokens_per_second, threads=torch.get_num_threads(), **extra)

    def finish(self, metrics: dict, history, test: dict, class_names, written: list[str], files: str) -> dict:
        metrics = self.run.finish(metrics, history, test, class_names)
        self.log(f"Done in {metrics['total_seconds']:.0f}s (training {self.train_seconds:.0f}s, peak memory "
                 f"{metrics['peak_memory_mb']:.0f} MB). Results: {self.run.out / 'metrics.json'}, {files}"
                 + "".join(f", {w}" for w in written))
        return metrics


def finetune_llm(cfg, *, log: Callable[[str], None] = print) -> dict:
    """Run the job for a resolved :class:`ftlib.config.FinetuneConfig` of task "text generation"."""
    job = GenerativeJob(cfg, log)
    return _answer_text(job) if answers_text(cfg) else _answer_classes(job)


def _answer_classes(job: GenerativeJob) -> dict:
    """Classes as one-word answers, measured by the answers' likelihood."""
    from ftlib.data import load_dataset, split_dataset
    from ftlib.evaluate import held_out_metrics
    from ftlib.generative import sft
    from ftlib.generative.forgetting import general_replies, generative_forgetting

    cfg, model, tokenizer, log = job.cfg, job.model, job.tokenizer, job.log
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
        y_pred = sft.classify(job.model, tokenizer, test_prompts, answers, max_length=cfg.max_length,
                              batch_size=16, bf16=job.autocast, progress=cfg.progress)
        return held_out_metrics(splits.test.labels, y_pred, raw.class_names, seed=cfg.seed)

    shown = test_prompts[:6]
    before = sft.generate(model, tokenizer, shown, max_new_tokens=12)
    general = general_replies(model, tokenizer)  # the base model, before any adapter: what it says in general
    zero_shot = accuracy_on_test()
    log(f"[3/7] Zero-shot (the instruct model as it comes, answer chosen by likelihood): test accuracy "
        f"{zero_shot['accuracy']:.4f}, macro F1 {zero_shot['macro_f1']:.4f}")

    job.adapt()
    history = job.train(train_examples, val_examples, learned="the answer and end-of-turn tokens", answers="answers")

    test = accuracy_on_test()
    after = sft.generate(job.model, tokenizer, shown, max_new_tokens=12)
    forgetting = generative_forgetting(job.model, tokenizer, general)
    low, high = test["accuracy_95ci"]
    log(f"[7/7] Test (fine-tuned, {test['num_examples']} examples): accuracy {test['accuracy']:.4f} (95% CI "
        f"{low:.3f}-{high:.3f}), macro F1 {test['macro_f1']:.4f}; zero-shot was {zero_shot['accuracy']:.4f}")
    _log_forgetting(log, forgetting)

    generations = [{"prompt": p, "answer": answers[y], "before": b, "after": a}
                   for p, y, b, a in zip(shown, splits.test.labels, before, after)]
    job.run.write_json("generations.json", generations)
    metrics = {**job.metrics(splits, history, test, zero_shot=zero_shot), "class_names": raw.class_names,
               "answers": answers, "forgetting": forgetting}
    written = job.save()
    return job.finish(metrics, history, test, raw.class_names, written, str(job.run.out / "generations.json"))


def _log_forgetting(log, forgetting: dict) -> None:
    same = sum(b == a for b, a in zip(forgetting["replies_before"], forgetting["replies_after"]))
    # Two facts, no verdict: every reply can change (a one-word answer) while the base model's
    # replies stay almost as likely, and the reverse.
    log(f"      general prompts: {same} of {len(forgetting['prompts'])} replies unchanged; perplexity of the base "
        f"model's replies {forgetting['perplexity_before']:.2f} -> {forgetting['perplexity_after']:.2f} "
        f"(x{forgetting['perplexity_after'] / forgetting['perplexity_before']:.2f}; higher: the fine-tuned model "
        f"finds what the base model said less likely)")


def chat_splits(cfg):
    """The registered chat data set or the user's files, split (grouped, seeded) where not given."""
    from ftlib.data import load_chats, load_dataset, split_chats

    if cfg.data is None:
        data = load_dataset(cfg.dataset)
        return data, split_chats(data, train_size=cfg.train_size, val_size=cfg.val_size, test_size=cfg.test_size,
                                 seed=cfg.seed)
    data = load_chats(cfg.data)
    val = load_chats(cfg.val_data) if cfg.val_data else None
    test = load_chats(cfg.test_data) if cfg.test_data else None
    train, split_val, split_test = split_chats(data, train_size=cfg.train_size, val_size=cfg.val_size,
                                               test_size=cfg.test_size, seed=cfg.seed,
                                               keep_val=val is None, keep_test=test is None)
    return data, (train, val or split_val, test or split_test)


def with_system(conversation: list[dict]) -> list[dict]:
    """The conversation with the short system turn the job trains and generates with, where it has none."""
    from ftlib.generative import sft

    if conversation and conversation[0]["role"] == "system":
        return conversation
    return [{"role": "system", "content": sft.SYSTEM_PROMPT}, *conversation]


def _chat_examples(tokenizer, conversations, max_length: int) -> tuple[list[dict], int]:
    """Training examples of the conversations that fit ``max_length``, and how many did not."""
    from ftlib.generative.chat import build_chat_example

    examples, skipped = [], 0
    for conversation in conversations:
        try:
            examples.append(build_chat_example(tokenizer, with_system(conversation), max_length))
        except ValueError:  # its last exchange alone does not fit: never cut inside an answer
            skipped += 1
    return examples, skipped


def text_scores(predictions: list[str], references: list[str], *, seed: int) -> dict:
    """ROUGE-1/2/L, lengths, a 95% bootstrap interval of ROUGE-L, and each example's ROUGE-L."""
    from ftlib.evaluate import bootstrap_interval
    from ftlib.generative.metrics import rouge_l, rouge_scores

    per_example = [rouge_l(p, r) for p, r in zip(predictions, references)]
    return {**rouge_scores(predictions, references), "rougeL_95ci": list(bootstrap_interval(per_example, 1000, seed)),
            "num_examples": len(references), "per_example_rougeL": per_example}


def _answer_text(job: GenerativeJob) -> dict:
    """Text answers (instruction data), measured by what the model writes."""
    from ftlib.evaluate import bootstrap_interval
    from ftlib.generative import sft
    from ftlib.generative.forgetting import general_replies, generative_forgetting

    cfg, tokenizer, log = job.cfg, job.tokenizer, job.log
    data, (train, val, test) = chat_splits(cfg)
    train_examples, skipped_train = _chat_examples(tokenizer, train.conversations, cfg.max_length)
    val_examples, skipped_val = _chat_examples(tokenizer, val.conversations, cfg.max_length)
    if not train_examples or not val_examples:
        raise ValueError(f"No {'training' if not train_examples else 'validation'} conversation fits "
                         f"--max-length {cfg.max_length} tokens, even without its older turns; raise --max-length.")
    prompts = [with_system(c[:-1]) for c in test.conversations]
    references = [c[-1]["content"] for c in test.conversations]
    max_new_tokens = job.max_new_tokens([c[-1]["content"] for c in train.conversations])
    mean_tokens = sum(len(e["input_ids"]) for e in train_examples) / len(train_examples)
    skipped = f"; {skipped_train + skipped_val} longer than --max-length {cfg.max_length} skipped" \
        if skipped_train + skipped_val else ""
    log(f"[2/7] Data: {data.name} ({data.format}, {len(data)} conversations); train {len(train_examples)} / "
        f"validation {len(val_examples)} / test {len(test)} (grouped, seed {cfg.seed}){skipped}; chat template, "
        f"{mean_tokens:.0f} tokens per training example on average; every assistant reply is learned")

    def write(model) -> list[str]:
        return sft.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=GENERATION_BATCH_SIZE)

    def describe(scores: dict) -> str:
        low, high = scores["rougeL_95ci"]
        return (f"ROUGE-L {scores['rougeL']:.4f} (95% CI {low:.3f}-{high:.3f}), ROUGE-1 {scores['rouge1']:.4f}, "
                f"ROUGE-2 {scores['rouge2']:.4f}; {scores['predicted_words']:.1f} words written per reply against "
                f"{scores['reference_words']:.1f} in the references")

    general = general_replies(job.model, tokenizer)  # the base model, before any adapter: what it says in general
    before = write(job.model)
    zero_shot = text_scores(before, references, seed=cfg.seed)
    log(f"[3/7] Zero-shot (the instruct model as it comes, greedy, at most {max_new_tokens} new tokens) on "
        f"{len(test)} test prompts: {describe(zero_shot)}")

    job.adapt()
    history = job.train(train_examples, val_examples, learned="every assistant reply and its end-of-turn token",
                        answers="replies")

    after = write(job.model)
    tested = text_scores(after, references, seed=cfg.seed)
    gains = [a - b for a, b in zip(tested["per_example_rougeL"], zero_shot["per_example_rougeL"])]
    tested["rougeL_gain"] = tested["rougeL"] - zero_shot["rougeL"]
    tested["rougeL_gain_95ci"] = list(bootstrap_interval(gains, 1000, cfg.seed))
    forgetting = generative_forgetting(job.model, tokenizer, general)
    low, high = tested["rougeL_gain_95ci"]
    log(f"[7/7] Test (fine-tuned, {len(test)} prompts): {describe(tested)}; ROUGE-L gain over zero-shot "
        f"{tested['rougeL_gain']:+.4f} (paired 95% CI {low:+.3f} to {high:+.3f})")
    _log_forgetting(log, forgetting)

    examples = [{"prompt": p[-1]["content"], "reference": r, "zero_shot": b, "fine_tuned": a,
                 "rougeL_zero_shot": rb, "rougeL_fine_tuned": ra}
                for p, r, b, a, rb, ra in zip(prompts, references, before, after, zero_shot["per_example_rougeL"],
                                              tested["per_example_rougeL"])]
    for e in examples[:EXAMPLES_SHOWN]:
        log(f"      prompt: {short(e['prompt'], 90)}\n        reference:  {short(e['reference'], 90)}\n"
            f"        zero-shot:  {short(e['zero_shot'], 90)}\n        fine-tuned: {short(e['fine_tuned'], 90)}")
    job.run.write_json("examples.json", examples)
    for scores in (zero_shot, tested):
        del scores["per_example_rougeL"]  # examples.json has them, beside the texts
    splits = SimpleNamespace(train=train_examples, val=val_examples, test=test)  # what run_metrics counts
    metrics = {**job.metrics(splits, history, tested, zero_shot=zero_shot, data_format=data.format,
                             skipped_too_long=skipped_train + skipped_val, max_new_tokens=max_new_tokens),
               "forgetting": forgetting}
    written = job.save()
    return job.finish(metrics, history, tested, None, written, str(job.run.out / "examples.json"))


def short(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."
