"""Forgetting in a chat model: what it still says of what it said before fine-tuning.

A generative model has no head to re-attach (as :mod:`ftlib.forgetting` does for the
image model): what it forgets shows in what it says. Before
supervised fine-tuning, :func:`general_replies` records the chat model's greedy replies to
a few general prompts (:data:`GENERAL_PROMPTS`: a fact, a haiku, arithmetic, a spam question...)
and their mean per-token negative log-likelihood under the model itself. After it,
:func:`generative_forgetting` asks the same prompts again (the share of identical replies)
and scores the *base* model's replies under the fine-tuned model: their perplexity rising
means the fine-tuned model finds what it said before less likely, as when sentiment
fine-tuning pulls a model towards answering "positive" to everything. The two measures can
disagree: a reply can change while its old wording stays likely, and the reverse.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ftlib import devices
from ftlib.generative import sft

__all__ = ["GENERAL_PROMPTS", "reply_nll", "general_replies", "generative_forgetting"]


# Short, varied requests an instruct model answers well zero-shot, each worded to keep the
# reply within a few dozen tokens (generation stops at max_new_tokens, 48 by default).
GENERAL_PROMPTS = (
    "What is the capital of France? Answer in one short sentence.",
    "Write a haiku about autumn leaves.",
    "Why is the sky blue? Answer in one short sentence.",
    "Tom has 3 apples and buys 5 more. How many apples does he have now? Answer in one short sentence.",
    "Is this e-mail spam? Answer yes or no, then give the reason in a few words.\n\n"
    "E-mail: Congratulations! You have won a $1,000 gift card. Click here to claim your prize now!",
    "Translate into French: Good morning, how are you?",
)


def reply_nll(model: nn.Module, tokenizer, prompts: Sequence[str], replies: Sequence[str], *,
              batch_size: int = 8) -> float:
    """Mean per-token negative log-likelihood (nats) of ``replies`` to ``prompts`` under ``model``.

    Each reply is scored as the assistant's turn after the chat-rendered prompt: its tokens
    and the end-of-turn token (:func:`ftlib.generative.sft.build_sft_example`), with the output layer
    applied only at those positions (:class:`ftlib.generative.sft.SFTModel`). The mean runs over all
    reply tokens of all prompts. A reply cut off at ``max_new_tokens`` is scored as if it
    ended there: the same sequences before and after fine-tuning, so the comparison stays
    fair. The model runs in eval mode without gradients; its previous mode is restored.
    """
    if len(prompts) != len(replies) or not prompts:
        raise ValueError(f"reply_nll needs as many replies as prompts, at least one; got {len(prompts)} prompts "
                         f"and {len(replies)} replies.")
    examples = [sft.build_sft_example(tokenizer, p, r, max_length=10**9) for p, r in zip(prompts, replies)]
    loader = sft.make_sft_loader(examples, tokenizer.pad_token_id, batch_size=batch_size)
    scorer = sft.SFTModel(model)  # (N, V) logits, one row per reply token: see its docstring
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                batch = devices.to_device(batch, device)
                logits = scorer(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
                total += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
                count += len(batch["labels"])
    finally:
        model.train(was_training)
    return total / count


def general_replies(model: nn.Module, tokenizer, prompts: Sequence[str] = GENERAL_PROMPTS, *,
                    max_new_tokens: int = 48) -> dict:
    """The chat model's greedy replies to general ``prompts``, and how sure it is of them.

    Call it *before* fine-tuning (for LoRA, before the adapters are added) and keep the
    result for :func:`generative_forgetting`, with the same ``max_new_tokens``.

    Returns
    -------
    dict (JSON-able) with ``prompts``, ``replies`` (:func:`ftlib.generative.sft.generate`: greedy,
    chat template, stopped at end of turn) and ``nll``, the mean per-token negative
    log-likelihood of those replies under the same model (:func:`reply_nll`).
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError("general_replies needs at least one prompt.")
    replies = sft.generate(model, tokenizer, prompts, max_new_tokens)
    return {"prompts": prompts, "replies": replies, "nll": reply_nll(model, tokenizer, prompts, replies)}


def generative_forgetting(model: nn.Module, tokenizer, before: dict, *, max_new_tokens: int = 48) -> dict:
    """What the fine-tuned chat ``model`` still says of what it said ``before`` fine-tuning.

    Parameters
    ----------
    model : nn.Module
        The fine-tuned causal LM: LoRA (peft) or fully fine-tuned, any model that generates.
    before : dict
        :func:`general_replies` of the model before fine-tuning.
    max_new_tokens : int
        As for ``before``: a different budget changes replies for no other reason.

    Returns
    -------
    dict (JSON-able) with ``prompts``, ``replies_before``, ``replies_after`` (the
    fine-tuned model's greedy replies), ``unchanged`` (share of prompts whose reply is
    identical), ``nll_before`` (``before["nll"]``), ``nll_after`` (mean per-token NLL of
    the *base* model's replies under the fine-tuned model) and ``perplexity_before`` /
    ``perplexity_after`` (their exponentials). A higher perplexity after: the fine-tuned
    model has drifted away from what the base model would say.
    """
    missing = {"prompts", "replies", "nll"} - set(before)
    if missing:
        raise ValueError(f"before must be what general_replies returned; it lacks {sorted(missing)}.")
    prompts, replies_before = list(before["prompts"]), list(before["replies"])
    replies_after = sft.generate(model, tokenizer, prompts, max_new_tokens)
    nll_before, nll_after = float(before["nll"]), reply_nll(model, tokenizer, prompts, replies_before)
    return {
        "prompts": prompts, "replies_before": replies_before, "replies_after": replies_after,
        "unchanged": sum(a == b for a, b in zip(replies_before, replies_after)) / len(prompts),
        "nll_before": nll_before, "nll_after": nll_after,
        "perplexity_before": math.exp(nll_before), "perplexity_after": math.exp(nll_after),
    }
