"""Preference tuning of a causal LM: DPO, and SimPO beside it.

Supervised fine-tuning shows the model good answers. Preference tuning shows it pairs: for
one prompt a *chosen* answer and a *rejected* one, and raises the first against the second.

**DPO** (Rafailov et al. 2023) needs no reward model. The policy's *implicit reward* of an
answer ``y`` is ``beta * (log pi(y|x) - log pi_ref(y|x))``: how much more likely the policy
finds it than the reference model (the model before preference tuning). The loss is
``-log sigmoid(reward(chosen) - reward(rejected))``, averaged over pairs: it asks for a
positive *margin*, and ``beta`` sets how far the policy may move from the reference for it
(small beta: far). Log-probabilities are *summed* over the answer's tokens only, prompt and
padding masked.

**The reference for free.** DPO needs ``log pi_ref`` of every answer. A second copy of the
model would double the memory. With LoRA the reference is the same model with its adapter
disabled (:func:`reference_logprobs`); in any case the reference never changes, so its
log-probabilities are computed once, before training, and stored with each pair
(:func:`with_reference`), which works for full fine-tuning too.

**SimPO** (Meng et al. 2024) drops the reference: the reward is the answer's *mean*
log-probability per token times ``beta``, and the margin must exceed ``gamma``.

**An SFT term** (``sft_weight``): both losses only ask that the chosen answer beat the
rejected one, which a model can also get by making *both* unlikely, until it writes neither
well. Adding ``sft_weight`` times the chosen answers' negative log-likelihood per token (the
SFT loss on the chosen answers) keeps the chosen answers likely: RPO (Pang et al. 2024; TRL's
``rpo_alpha``) for DPO, CPO-SimPO (TRL's ``cpo_alpha``) for SimPO. Off (0) by default here, so
the class computes the losses as their papers write them; ``ftlib finetune`` turns it on
(``ftlib.config.PREFERENCE``).

**Reading the curves.** The preference accuracy (the share of pairs whose chosen reward is
higher) and the margin should rise. The chosen reward often *falls* while the margin rises:
DPO lowers both answers' likelihood, the rejected one faster; a falling chosen reward is
not a bug, but a chosen reward that falls far means the model is drifting from good
answers too. Rewards stuck at zero mean the policy does not move (a learning rate too
small, or the adapter not trained).

:class:`PreferenceModel` makes the loss what ``ftlib.train.fit`` computes: its forward
returns, for each pair, the two rewards as the logits of a two-way choice with the chosen
answer as the label, and cross-entropy over ``[a, b]`` with label 0 is ``-log sigmoid(a - b)``,
the DPO loss (:meth:`PreferenceModel.loss`, fit's ``loss_fn``, subtracts SimPO's margin
first); fit's accuracy is then the preference accuracy. It records the rewards of every
training step (:attr:`PreferenceModel.steps`) for the learning curves.

Course notebook 11's exercises are :func:`completion_logprobs`, :func:`dpo_loss`,
:func:`reference_logprobs` and :func:`preference_accuracy`.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ftlib import arguments
from ftlib.generative.sft import IGNORE_INDEX, collate_sft, end_of_turn_id, labelled_logits, pad_to_multiple, prompt_ids

__all__ = ["DPO_BETA", "SIMPO_BETA", "SIMPO_GAMMA", "SFT_WEIGHT", "completion_logprobs", "dpo_loss", "simpo_loss",
           "reference_logprobs", "preference_accuracy", "build_preference_example", "collate_preferences",
           "sequence_logprobs", "with_reference", "PreferenceModel", "PreferenceLoader", "preference_metrics"]

DPO_BETA = 0.1  # the DPO paper's and TRL's default
SIMPO_BETA, SIMPO_GAMMA = 2.0, 0.5  # SimPO's defaults (reward scale; target margin)
SFT_WEIGHT = 0.0  # no SFT term: DPO and SimPO as their papers write them (TRL's rpo_alpha None)


# The four exercises of notebook 11, written out ----------------------------------------------

def completion_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed log-probability of each row's labelled tokens: ``(B,)``.

    ``logits`` (B, T, V) and ``labels`` (B, T) are aligned with the inputs (position t
    predicts token t + 1: one shift, here) and ``labels`` is -100 on the prompt and the
    padding, so only the answer's tokens count. A sum, not a mean: a longer answer's
    probability is the product of more factors, and DPO compares whole answers.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, V) and labels (B, T); got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}.")
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    picked = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float = DPO_BETA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss (sigmoid form) and the implicit rewards.

    Four ``(B,)`` tensors of summed log-probabilities. Returns the mean loss
    ``-log sigmoid(r_chosen - r_rejected)`` and the rewards ``r = beta * (policy - reference)``
    of the chosen and rejected answers, ``(B,)`` each, detached (they are diagnostics: the
    gradient flows through the loss only).
    """
    chosen = beta * (policy_chosen - reference_chosen)
    rejected = beta * (policy_rejected - reference_rejected)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return loss, chosen.detach(), rejected.detach()


@torch.no_grad()
def reference_logprobs(model: nn.Module, batch: dict) -> torch.Tensor:
    """The reference model's ``(B,)`` log-probabilities of ``batch``'s answers, for a peft LoRA model.

    The reference is the model with its adapter disabled, run without gradients in eval
    mode; the model's mode and adapter come back as they were. ``batch`` holds
    ``input_ids``, ``attention_mask`` and ``labels`` (B, T), -100 off the answers.
    """
    if not hasattr(model, "disable_adapter"):
        raise TypeError(f"reference_logprobs needs a peft model (its adapter off is the reference); got "
                        f"{type(model).__name__}.")
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        model.train(was_training)
    return completion_logprobs(logits, batch["labels"])


def preference_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """The share of pairs whose chosen answer has the higher reward (ties count as wrong)."""
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.numel() == 0:
        raise ValueError(f"preference_accuracy needs two non-empty tensors of one shape; got "
                         f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}.")
    return (chosen_rewards > rejected_rewards).float().mean().item()


def simpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_lengths: torch.Tensor,
               rejected_lengths: torch.Tensor, beta: float = SIMPO_BETA,
               gamma: float = SIMPO_GAMMA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO: ``-log sigmoid(r_chosen - r_rejected - gamma)`` with ``r = beta * logprob / length``; no reference.

    Returns the mean loss and the (detached) rewards, as :func:`dpo_loss` does.
    """
    chosen = beta * policy_chosen / chosen_lengths
    rejected = beta * policy_rejected / rejected_lengths
    loss = -F.logsigmoid(chosen - rejected - gamma).mean()
    return loss, chosen.detach(), rejected.detach()


# Pairs as training data ----------------------------------------------------------------------

def build_preference_example(tokenizer, prompt: str | Sequence[dict], chosen: str, rejected: str,
                             max_length: int) -> dict:
    """One pair: the prompt rendered with the chat template, then each answer and its end of turn.

    Returns ``{"chosen": {...}, "rejected": {...}}``, each with ``input_ids``, ``attention_mask``
    and ``labels`` (-100 on the prompt). The prompt loses tokens from its start when an
    answer would not fit ``max_length``; an answer is never cut (``ValueError`` when one
    alone does not fit).
    """
    arguments.integer(max_length, "max_length", minimum=2)
    context = prompt_ids(tokenizer, prompt)
    stop = end_of_turn_id(tokenizer)
    answers = {name: tokenizer(text, add_special_tokens=False)["input_ids"] + [stop]
               for name, text in (("chosen", chosen), ("rejected", rejected))}
    room = max_length - max(len(a) for a in answers.values())
    if room < 1:
        raise ValueError(f"An answer takes {max_length - room} tokens with its end of turn, more than max_length="
                         f"{max_length} allows with a prompt; raise max_length.")
    context = context[-room:]
    return {name: {"input_ids": context + answer, "attention_mask": [1] * (len(context) + len(answer)),
                   "labels": [IGNORE_INDEX] * len(context) + answer}
            for name, answer in answers.items()}


def collate_preferences(pairs: Sequence[dict], pad_token_id: int, *, pad_to_multiple_of: int | None = None) -> dict:
    """Pairs into one batch: ``input_ids``, ``attention_mask`` and ``labels`` of shape (B, 2, T).

    Row ``[i, 0]`` is pair i's chosen answer, ``[i, 1]`` its rejected one, right-padded to
    one length (a multiple of ``pad_to_multiple_of``, see ``sft.pad_to_multiple``); stored
    reference log-probabilities (:func:`with_reference`) come as ``reference`` (B, 2).
    """
    if not pairs:
        raise ValueError("collate_preferences needs at least one pair.")
    rows = collate_sft([p[name] for p in pairs for name in ("chosen", "rejected")], pad_token_id)
    batch = pad_to_multiple(rows, pad_to_multiple_of, pad_token_id)
    batch = {k: v.view(len(pairs), 2, -1) for k, v in batch.items()}
    if all("reference" in p for p in pairs):
        batch["reference"] = torch.tensor([p["reference"] for p in pairs], dtype=torch.float32)
    return batch


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B,)`` summed log-probabilities of the labelled tokens, and ``(B,)`` their counts.

    What :func:`completion_logprobs` computes, with the output layer applied only at the
    positions whose next token is labelled (``ftlib.generative.sft.labelled_logits``): the
    whole ``(B, T, V)`` logits of SmolLM2 would cost hundreds of megabytes per batch.
    """
    target_mask = torch.zeros_like(labels, dtype=torch.bool)
    target_mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    logits = labelled_logits(model, input_ids, attention_mask, target_mask).float()  # (N, V)
    targets = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]
    picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    rows = target_mask.nonzero()[:, 0]
    sums = torch.zeros(len(labels), dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)
    return sums, target_mask.sum(dim=1)


@contextlib.contextmanager
def _reference_of(model: nn.Module):
    """The reference model: ``model`` with its adapter disabled (peft), else ``model`` itself."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


@torch.no_grad()
def with_reference(model: nn.Module, pairs: Sequence[dict], pad_token_id: int, *, batch_size: int = 8) -> list[dict]:
    """The pairs with the reference's log-probabilities of both answers stored (``"reference"``).

    Run before preference training, on the model as it starts (a LoRA model's adapter is
    disabled meanwhile; a fully fine-tuned model is its own reference at this point), so no
    second copy of the model is ever held.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with _reference_of(model):
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start:start + batch_size]
                batch = collate_preferences(chunk, pad_token_id)
                flat = {k: batch[k].flatten(0, 1).to(device) for k in ("input_ids", "attention_mask", "labels")}
                sums, _ = sequence_logprobs(model, **flat)
                for pair, (chosen, rejected) in zip(chunk, sums.view(-1, 2).tolist()):
                    out.append({**pair, "reference": [chosen, rejected]})
    finally:
        model.train(was_training)
    return out


class PreferenceModel(nn.Module):
    """A causal LM seen by ``ftlib.train.fit`` as a two-way choice per pair: DPO or SimPO.

    ``forward(input_ids, attention_mask, answer_labels, reference)`` takes a batch of
    :class:`PreferenceLoader` (``reference`` for DPO only) and returns ``(B, 2)`` logits:
    the chosen and rejected rewards. The batch's ``labels`` are zeros (the chosen answer),
    so with ``fit(..., loss_fn=model.loss)`` fit's loss is the DPO (or SimPO) loss and its
    accuracy the preference accuracy. In training mode every step's mean rewards, margin
    and accuracy are appended to :attr:`steps`.

    With ``sft_weight`` > 0 the loss adds that weight times the chosen answers' mean negative
    log-likelihood per token (RPO for DPO, CPO-SimPO for SimPO): :meth:`forward` keeps it for
    :meth:`loss`, which fit calls next on the same batch.
    """

    def __init__(self, model: nn.Module, *, method: str = "dpo", beta: float | None = None,
                 gamma: float = SIMPO_GAMMA, sft_weight: float = SFT_WEIGHT) -> None:
        super().__init__()
        arguments.one_of(method, "method", ("dpo", "simpo"))
        self.model, self.method = model, method
        self.beta = float(beta if beta is not None else self.default_beta(method))
        arguments.number(self.beta, "beta")
        self.gamma = float(gamma)
        self.sft_weight = float(sft_weight)
        if not self.sft_weight >= 0:
            raise ValueError(f"sft_weight must be a number >= 0 (0: no SFT term); got {sft_weight!r}.")
        self.steps: list[dict] = []
        self._chosen_nll: torch.Tensor | None = None

    @staticmethod
    def default_beta(method: str) -> float:
        """``beta`` when none is given: :data:`DPO_BETA` or :data:`SIMPO_BETA`."""
        return DPO_BETA if method == "dpo" else SIMPO_BETA

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_labels: torch.Tensor,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 2)``: the chosen and rejected answers' rewards."""
        b = input_ids.shape[0]
        sums, counts = sequence_logprobs(self.model, input_ids.flatten(0, 1), attention_mask.flatten(0, 1),
                                         answer_labels.flatten(0, 1))
        sums, counts = sums.view(b, 2), counts.view(b, 2)
        # The chosen answers' NLL per token over the batch (TRL's nll_loss), for the SFT term.
        self._chosen_nll = -sums[:, 0].sum() / counts[:, 0].sum().clamp(min=1)
        if self.method == "simpo":
            return self.beta * sums / counts.clamp(min=1)
        if reference is None:
            raise ValueError("DPO needs the reference's log-probabilities in the batch: prepare the pairs with "
                             "with_reference(model, pairs, pad_token_id) before training.")
        return self.beta * (sums - reference.to(sums.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, answer_labels: torch.Tensor,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        rewards = self.rewards(input_ids, attention_mask, answer_labels, reference)
        if self.training:
            detached = rewards.detach()
            self.steps.append(preference_metrics(detached[:, 0], detached[:, 1]))
        return rewards

    def loss(self, rewards: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """fit's ``loss_fn``: cross-entropy of the two-way choice, ``-log sigmoid(r_chosen - r_rejected)``
        for DPO, and less SimPO's target margin ``gamma`` for SimPO; plus ``sft_weight`` times the
        chosen answers' NLL per token of the batch :meth:`forward` last saw."""
        if self.method == "simpo":
            rewards = rewards + torch.tensor([0.0, self.gamma], device=rewards.device, dtype=rewards.dtype)
        loss = F.cross_entropy(rewards, labels)
        if self.sft_weight:
            if self._chosen_nll is None:
                raise RuntimeError("PreferenceModel.loss with an SFT term needs forward() on the batch first.")
            loss = loss + self.sft_weight * self._chosen_nll.to(loss.dtype)
        self._chosen_nll = None
        return loss


def preference_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """Mean chosen and rejected rewards, their mean margin, and the preference accuracy."""
    return {"chosen_reward": chosen.mean().item(), "rejected_reward": rejected.mean().item(),
            "margin": (chosen - rejected).mean().item(), "accuracy": preference_accuracy(chosen, rejected)}


class PreferenceLoader:
    """Batches of pairs for ``fit``: ``input_ids``, ``attention_mask``, ``answer_labels`` (B, 2, T),
    ``reference`` (B, 2) where stored, and ``labels`` (B,) zeros (the chosen answer).

    With ``shuffle``, each epoch draws a new order from its seeded ``generator`` (which
    ``fit`` re-seeds). Pairs are padded to a multiple of 16 tokens, as SFT batches are.
    """

    def __init__(self, pairs: Sequence[dict], pad_token_id: int, *, batch_size: int = 4, shuffle: bool = False,
                 seed: int = 0) -> None:
        if not pairs:
            raise ValueError("PreferenceLoader needs at least one pair.")
        arguments.integer(batch_size, "batch_size")
        self.pairs, self.pad_token_id, self.batch_size, self.shuffle = list(pairs), pad_token_id, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.pairs) // self.batch_size)

    def __iter__(self) -> Iterable[dict]:
        order = torch.randperm(len(self.pairs), generator=self.generator).tolist() if self.shuffle \
            else list(range(len(self.pairs)))
        for start in range(0, len(order), self.batch_size):
            batch = collate_preferences([self.pairs[i] for i in order[start:start + self.batch_size]],
                                        self.pad_token_id, pad_to_multiple_of=16)
            out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                   "answer_labels": batch["labels"]}
            if "reference" in batch:
                out["reference"] = batch["reference"]
            out["labels"] = torch.zeros(len(batch["input_ids"]), dtype=torch.long)
            yield out
