"""Preference tuning as a job: what ``ftlib finetune --model smollm2-135m --technique dpo`` runs.

The pairs are your own (``--data pairs.jsonl``, TRL's preference format, ``ftlib.data.pairs``)
or built by self-play (SPIN, Chen et al. 2024) from ``bbc-headlines`` or your instruction
data (``--data chats.jsonl``): for each prompt the chosen answer is the data's (an article's
real headline) and the rejected one what the starting model itself writes, greedy. They are
generated once and cached in ``<cache>/pairs/`` with the model, data, seed and sizes that
made them (``train.jsonl``, ``val.jsonl``, ``test.jsonl`` in TRL's format, and ``made_by.json``).

The starting model is the registered one or, with ``--from RUN``, a fine-tuned run (an
SFT run of ``bbc-headlines``, say): its adapter is folded into the weights, which become
the reference, and a new LoRA adapter learns the preferences (``--technique dpo``, or
``simpo``, reference-free). By default (``ftlib.config.PREFERENCE``) the loss adds an SFT term
on the chosen answers (``--sft-weight``, 1: RPO for DPO, CPO-SimPO for SimPO), which keeps the
model writing good answers while it learns the preference, and activations are recomputed in
the backward pass, which keeps two sequences a step within memory.

The run reports, before and after, on held-out pairs: the preference accuracy (how often the
chosen answer is the more likely one; after training, how often its implicit reward is the
higher) and the mean margin; for ``bbc-headlines`` the
ROUGE-L of the headlines written for the test articles against the real ones; and the
learning curves of the rewards (``preference_curves.png``, every step). ``metrics.json``,
``examples.json``, ``adapter/`` and, with ``--merge``, ``merged/`` as the other generative jobs.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

from ftlib.config import GENERATION_BATCH_SIZE, PREFERENCE
from ftlib.pipeline_llm import GenerativeJob, chat_splits, short, text_scores, with_system

__all__ = ["finetune_preferences", "self_play_pairs", "score_pairs"]

def _cached_pairs(job: GenerativeJob, data, splits, max_new_tokens: int):
    """``(train, val, test)`` PairData of self-play pairs, read from the cache or made (and cached)."""
    from ftlib.data.pairs import load_pairs
    from ftlib.paths import cache_dir

    cfg = job.cfg
    made_by = {"dataset": cfg.dataset, "model": job.model_tag, "seed": cfg.seed, "max_new_tokens": max_new_tokens,
               "sizes": [len(s) for s in splits], "rule": "chosen: the data's answer; rejected: the model's greedy"}
    if cfg.data is not None:
        made_by["data_sha256"] = hashlib.sha256(Path(cfg.data).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "pairs" / f"{cfg.dataset}-{key}"
    if not (folder / "made_by.json").exists():
        job.log(f"      making the pairs: the starting model writes an answer for each of {sum(map(len, splits))} "
                f"prompts (once; cached in {folder})")
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, split in zip(("train", "val", "test"), splits):
            pairs = self_play_pairs(job.model, job.tokenizer, split.conversations, max_new_tokens=max_new_tokens)
            if not pairs:
                raise ValueError(f"The starting model wrote nothing, or the data's own answers, for every {name} "
                                 f"prompt of {cfg.dataset}: no pair to learn a preference from.")
            (tmp / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
        (tmp / "made_by.json").write_text(json.dumps(made_by, indent=1))
        tmp.replace(folder)
    else:
        job.log(f"      the pairs: cached in {folder} (made by {made_by['model']}, seed {cfg.seed})")
    return tuple(load_pairs(folder / f"{name}.jsonl", name=f"{cfg.dataset}-pairs")
                 for name in ("train", "val", "test")), folder


def self_play_pairs(model, tokenizer, conversations, *, max_new_tokens: int) -> list[dict]:
    """TRL preference rows from conversations: chosen, the last reply; rejected, the model's own greedy reply.

    Prompts whose own reply equals the reference (ignoring case and spacing) give no pair:
    there is nothing to prefer.
    """
    from ftlib.generative import sft

    prompts = [with_system(c[:-1]) for c in conversations]
    replies = sft.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=GENERATION_BATCH_SIZE)
    rows = []
    for prompt, conversation, reply in zip(prompts, conversations, replies):
        chosen = conversation[-1]["content"]
        if " ".join(reply.lower().split()) and " ".join(reply.lower().split()) != " ".join(chosen.lower().split()):
            rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": reply}]})
    return rows


def _examples(tokenizer, pairs, max_length: int) -> tuple[list[dict], int]:
    from ftlib.generative.preference import build_preference_example

    out, skipped = [], 0
    for prompt, chosen, rejected in zip(pairs.prompts, pairs.chosen, pairs.rejected):
        try:
            out.append(build_preference_example(tokenizer, with_system(prompt), chosen, rejected, max_length))
        except ValueError:  # an answer alone does not fit: never cut inside an answer
            skipped += 1
    return out, skipped


def _held_out(model, examples, pad_token_id: int, method: str, beta: float, batch_size: int) -> dict:
    """On held-out pairs: how often the chosen answer is the more likely (its summed log-probability
    the higher: ``likelihood_accuracy``; per token, what SimPO compares: ``per_token_accuracy``),
    its mean log-probability lead, and (with stored references, for DPO) the implicit rewards'
    accuracy and margin. ``method`` only decides the latter."""
    import torch

    from ftlib.generative.preference import PreferenceLoader, preference_metrics, sequence_logprobs

    device = next(model.parameters()).device
    sums, counts, references = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in PreferenceLoader(examples, pad_token_id, batch_size=batch_size):
                b = batch["input_ids"].shape[0]
                s, c = sequence_logprobs(model, *(batch[k].flatten(0, 1).to(device)
                                                  for k in ("input_ids", "attention_mask", "answer_labels")))
                sums.append(s.view(b, 2).cpu())
                counts.append(c.view(b, 2).cpu())
                if "reference" in batch:
                    references.append(batch["reference"])
    finally:
        model.train(was_training)
    logp, n = torch.cat(sums), torch.cat(counts).clamp(min=1)
    per_token = logp / n
    out = {"likelihood_accuracy": (logp[:, 0] > logp[:, 1]).float().mean().item(),
           "per_token_accuracy": (per_token[:, 0] > per_token[:, 1]).float().mean().item(),
           "logprob_lead": (logp[:, 0] - logp[:, 1]).mean().item(), "num_pairs": len(examples)}
    if references and method == "dpo":
        rewards = beta * (logp - torch.cat(references))
        out.update(preference_metrics(rewards[:, 0], rewards[:, 1]))
    return out


def score_pairs(model, tokenizer, pairs, *, max_length: int, batch_size: int = 2) -> dict:
    """A model's figures on held-out ``pairs`` (``PairData``), as the job reports them before and after:
    ``likelihood_accuracy``, ``per_token_accuracy``, ``logprob_lead``, ``num_pairs`` (and
    ``skipped_too_long``). For a model the job did not train: the starting model, say."""
    examples, skipped = _examples(tokenizer, pairs, max_length)
    return {**_held_out(model, examples, tokenizer.pad_token_id, "dpo", 0.0, batch_size), "skipped_too_long": skipped}


def _plot_steps(steps: list[dict], path: Path) -> None:
    import os
    import sys

    import matplotlib

    if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # files only, as ftlib.reporting does; a notebook keeps its own backend
    import matplotlib.pyplot as plt

    x = list(range(1, len(steps) + 1))
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("chosen_reward", "chosen"), ("rejected_reward", "rejected"), ("margin", "margin")):
        ax[0].plot(x, [s[key] for s in steps], label=label)
    ax[0].axhline(0, color="grey", lw=0.5)
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("reward (batch mean)")
    ax[0].legend()
    ax[1].plot(x, [s["accuracy"] for s in steps])
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("preference accuracy (batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finetune_preferences(cfg, *, log=print) -> dict:
    """Run the preference job for a resolved :class:`ftlib.config.FinetuneConfig` (technique dpo or simpo)."""
    from ftlib.data.pairs import load_pairs, looks_like_pairs, split_pairs
    from ftlib.generative import sft
    from ftlib.generative.preference import SIMPO_GAMMA, PreferenceLoader, PreferenceModel, with_reference

    job = GenerativeJob(cfg, log, adapter_from=cfg.from_run)
    tokenizer, log = job.tokenizer, job.log
    method = cfg.technique
    beta = float(cfg.technique_options.get("beta", PreferenceModel.default_beta(method)))
    sft_weight = float(cfg.technique_options.get("sft_weight", PREFERENCE["sft_weight"]))
    gamma = float(cfg.technique_options.get("gamma", SIMPO_GAMMA))

    reference_texts = None
    if cfg.data is None or not looks_like_pairs(cfg.data):  # self-play pairs of instruction data
        data, splits = chat_splits(cfg)
        reference_texts = ([with_system(c[:-1]) for c in splits[2].conversations],
                           [c[-1]["content"] for c in splits[2].conversations])
        max_new_tokens = job.max_new_tokens([c[-1]["content"] for c in splits[0].conversations])
        (train, val, test), where = _cached_pairs(job, data, splits, max_new_tokens)
        source = f"{cfg.dataset} by self-play (chosen: the real answer; rejected: the starting model's own)"
        pairs_folder = str(where)
    else:
        pairs = load_pairs(cfg.data)
        val = load_pairs(cfg.val_data) if cfg.val_data else None
        test = load_pairs(cfg.test_data) if cfg.test_data else None
        train, split_val, split_test = split_pairs(pairs, train_size=cfg.train_size, val_size=cfg.val_size,
                                                   test_size=cfg.test_size, seed=cfg.seed, keep_val=val is None,
                                                   keep_test=test is None)
        val, test = val or split_val, test or split_test
        source = f"{pairs.name} ({pairs.format} preference pairs)"
        pairs_folder = None
    examples = {name: _examples(tokenizer, split, cfg.max_length) for name, split in
                (("train", train), ("val", val), ("test", test))}
    skipped = sum(s for _, s in examples.values())
    if not examples["train"][0] or not examples["val"][0] or not examples["test"][0]:
        raise ValueError(f"Too few pairs fit --max-length {cfg.max_length}: train {len(examples['train'][0])}, "
                         f"validation {len(examples['val'][0])}, test {len(examples['test'][0])}; raise --max-length.")
    log(f"[2/7] Data: {source}; pairs: train {len(examples['train'][0])} / validation {len(examples['val'][0])} / "
        f"test {len(examples['test'][0])} (grouped, seed {cfg.seed})"
        + (f"; {skipped} longer than --max-length {cfg.max_length} skipped" if skipped else ""))

    def rouge(model) -> dict | None:
        if reference_texts is None:
            return None
        prompts, references = reference_texts
        written = sft.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                               batch_size=GENERATION_BATCH_SIZE)
        return {**text_scores(written, references, seed=cfg.seed), "written": written}

    before_rouge = rouge(job.model)
    before = _held_out(job.model, examples["test"][0], tokenizer.pad_token_id, method, beta, 2 * cfg.batch_size)
    log(f"[3/7] Before: on {before['num_pairs']} held-out pairs the chosen answer is the more likely in "
        f"{100 * before['likelihood_accuracy']:.1f}% (mean log-probability lead {before['logprob_lead']:+.2f})"
        + (f"; headlines ROUGE-L {before_rouge['rougeL']:.4f}" if before_rouge else ""))

    job.adapt()
    if PREFERENCE["activation_checkpointing"]:  # two sequences a step: recompute activations, hold fewer
        job.model.activation_checkpointing_enable()
    train_pairs, val_pairs, test_pairs = (examples[k][0] for k in ("train", "val", "test"))
    if method == "dpo":  # the reference's log-probabilities, once, before the adapter learns anything
        train_pairs, val_pairs, test_pairs = (with_reference(job.model, p, tokenizer.pad_token_id,
                                                             batch_size=2 * cfg.batch_size)
                                              for p in (train_pairs, val_pairs, test_pairs))
    policy = PreferenceModel(job.model, method=method, beta=beta, gamma=gamma, sft_weight=sft_weight)
    train_loader = PreferenceLoader(train_pairs, tokenizer.pad_token_id, batch_size=cfg.batch_size, shuffle=True,
                                    seed=cfg.seed)
    val_loader = PreferenceLoader(val_pairs, tokenizer.pad_token_id, batch_size=2 * cfg.batch_size)
    what = f"DPO, beta {beta:g}" if method == "dpo" else f"SimPO, beta {beta:g}, margin {policy.gamma:g}"
    if sft_weight:
        what += f", plus {sft_weight:g} x the chosen answers' SFT loss ({'RPO' if method == 'dpo' else 'CPO-SimPO'})"
    if method == "dpo":
        what += "; the reference is the model with its adapter off"
    if PREFERENCE["activation_checkpointing"]:
        what += "; activations recomputed in the backward pass (less memory, more time)"
    history = job.train_on(policy, train_loader, val_loader, loss_fn=policy.loss, learned=what)
    for e in history.to_list():
        log(f"      epoch {e['epoch'] + 1}: train loss {e['train_loss']:.4f}, preference accuracy "
            f"{e['train_accuracy']:.3f} | validation loss {e['val_loss']:.4f}, preference accuracy "
            f"{e['val_accuracy']:.3f} | {e['seconds']:.1f}s")

    after = _held_out(job.model, test_pairs, tokenizer.pad_token_id, method, beta, 2 * cfg.batch_size)
    after_rouge = rouge(job.model)
    line = (f"[7/7] After, on the {after['num_pairs']} held-out pairs: the chosen answer is the more likely in "
            f"{100 * after['likelihood_accuracy']:.1f}% (was {100 * before['likelihood_accuracy']:.1f}%), "
            f"log-probability lead {after['logprob_lead']:+.2f} (was {before['logprob_lead']:+.2f})")
    if "margin" in after:
        line += (f"; implicit rewards: chosen {after['chosen_reward']:+.3f}, rejected {after['rejected_reward']:+.3f}, "
                 f"margin {after['margin']:+.3f}, preference accuracy {after['accuracy']:.3f}")
    log(line)
    examples_out = []
    if after_rouge:
        log(f"      headlines: ROUGE-L {before_rouge['rougeL']:.4f} -> {after_rouge['rougeL']:.4f}; "
            f"{before_rouge['predicted_words']:.1f} -> {after_rouge['predicted_words']:.1f} words written against "
            f"{after_rouge['reference_words']:.1f} in the references")
        prompts, references = reference_texts
        examples_out = [{"prompt": p[-1]["content"], "reference": r, "before": b, "after": a}
                        for p, r, b, a in zip(prompts, references, before_rouge.pop("written"),
                                              after_rouge.pop("written"))]
        for e in examples_out[:2]:
            log(f"      reference: {short(e['reference'], 80)} | before: {short(e['before'], 60)} | "
                f"after: {short(e['after'], 60)}")
        for scores in (before_rouge, after_rouge):
            scores.pop("per_example_rougeL")
        job.run.write_json("examples.json", examples_out)
    if job.run.main:
        _plot_steps(policy.steps, job.run.out / "preference_curves.png")
    splits = SimpleNamespace(train=train_pairs, val=val_pairs, test=test_pairs)
    test = {**after, "rouge": after_rouge}
    metrics = {**job.metrics(splits, history, test, before={**before, "rouge": before_rouge}, method=method,
                             beta=beta, gamma=gamma if method == "simpo" else None, sft_weight=sft_weight,
                             from_run=cfg.from_run, skipped_too_long=skipped, pairs=pairs_folder),
               "steps": policy.steps}
    written = job.save()
    return job.finish(metrics, history, test, None, written, str(job.run.out / "preference_curves.png"))
