"""Checks of 11_preference_tuning: answer log-probabilities, the DPO loss, the reference, preference accuracy.

Every check compares the learner's function with ``ftlib.generative.preference`` on fresh,
seeded inputs. ``completion_logprobs`` and ``dpo_loss`` get random tensors whose rows have
prompts, answers and padding of different lengths and margins of both signs, so that each
mistake (the prompt or padding counted, a mean for the sum, the shift missing or doubled,
the margin's sign flipped, ``beta`` applied twice, rewards left attached to the graph) gives
another number, which the check names. ``reference_logprobs`` runs on the tiny random Llama of
``ftlib.models`` with a LoRA adapter that changes its outputs: a hook on the decoder records
the mode, the gradient state and whether the adapter was off at every forward pass, and the
check looks at the model after the call (its mode, its adapter on and unchanged).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ftlib.checks._common import CheckFailure, call, expect, quiet
from ftlib.checks.remote import observe
from ftlib.generative import preference as reference

__all__ = ["check_completion_logprobs", "check_dpo_loss", "check_reference_logprobs", "check_preference_accuracy",
           "probe_completion_logprobs", "probe_dpo_loss", "probe_reference_logprobs", "probe_preference_accuracy",
           "tiny_lora_model"]

# Imported once by `ftlib check` before its grade cells fork (see grading._runner).
PRELOAD = ("transformers.models.llama.modeling_llama", "transformers.tokenization_utils_tokenizers",
           "peft", "peft.tuners.lora")

_IGNORE = -100


def _describe_tensor(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{type(value).__name__} {value.dtype} {tuple(value.shape)}"
    return type(value).__name__


def _values(value) -> torch.Tensor | None:
    """A float64 copy of a returned tensor (exact type only), or None."""
    if type(value) in (torch.Tensor, nn.Parameter) and value.is_floating_point():
        return value.detach().to(torch.float64).clone()
    return None


def _shown(t: torch.Tensor) -> list[float]:
    return [round(float(v), 4) for v in t.reshape(-1).tolist()]


def _close(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
    return tuple(got.shape) == tuple(want.shape) and bool(torch.allclose(got, want.to(got.dtype), atol=atol, rtol=rtol))


# --------------------------------------------------------------------------- completion_logprobs

# (seed, vocabulary, rows): each row is (prompt, answer, padding) lengths; one length per case.
_LOGPROB_CASES = [
    (0, 13, [(3, 4, 2), (2, 6, 1), (5, 2, 2)]),
    (1, 17, [(5, 7, 0), (1, 3, 8)]),
]
_LOGPROB_THOROUGH = [
    (2, 31, [(4, 1, 11), (1, 10, 5), (6, 6, 4), (8, 8, 0)]),
    (3, 7, [(2, 2, 0)]),
]


def _logprob_cases(thorough: bool) -> list:
    return _LOGPROB_CASES + (_LOGPROB_THOROUGH if thorough else [])


def _logprob_inputs(seed: int, vocab: int, rows: list) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, T, V) and labels (B, T): -100 on each row's prompt and padding, tokens on its answer."""
    g = torch.Generator().manual_seed(seed)
    length = sum(rows[0])
    logits = torch.randn(len(rows), length, vocab, generator=g) * 2
    labels = torch.full((len(rows), length), _IGNORE, dtype=torch.long)
    for i, (prompt, answer, _) in enumerate(rows):
        labels[i, prompt:prompt + answer] = torch.randint(1, vocab, (answer,), generator=g)
    return logits, labels


def _logprob_label(rows: list) -> str:
    return (f"{len(rows)} rows of {sum(rows[0])} positions; prompt, answer and padding lengths "
            f"{[tuple(r) for r in rows]}")


def probe_completion_logprobs(completion_logprobs, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their log-probabilities per case, whether the inputs survived,
    whether the result carries gradients back to the logits."""
    name = "completion_logprobs"
    with quiet():
        observed = []
        for case in _logprob_cases(thorough):
            logits, labels = _logprob_inputs(*case)
            given_logits, given_labels = logits.clone().requires_grad_(True), labels.clone()
            got = call(completion_logprobs, given_logits, given_labels, name=name)
            observed.append({"value": _values(got), "found": _describe_tensor(got),
                             "requires_grad": isinstance(got, torch.Tensor) and got.requires_grad is True,
                             "labels_modified": not torch.equal(given_labels, labels),
                             "logits_modified": not torch.equal(given_logits.detach(), logits)})
        return observed


def _logprob_variant(logits: torch.Tensor, labels: torch.Tensor, *, shift: int = 1, mask: bool = True,
                     reduce: str = "sum", scores: str = "log_softmax", unshifted_mask: bool = False) -> torch.Tensor:
    """(B,) what a version with one mistake returns: another shift, no mask, a mean, raw scores, the
    mask of the labels before the shift..."""
    logits = logits.double()
    if unshifted_mask:  # the labels shifted, the mask not
        keep = labels[:, :-1] != _IGNORE
        table = torch.log_softmax(logits[:, :-1], -1)
        return (table.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(-1)
    if shift > 0:
        logits, labels = logits[:, :-shift], labels[:, shift:]
    elif shift < 0:
        logits, labels = logits[:, -shift:], labels[:, :shift]
    keep = labels != _IGNORE if mask else torch.ones_like(labels, dtype=torch.bool)
    table = {"log_softmax": torch.log_softmax(logits, -1), "softmax": torch.softmax(logits, -1), "raw": logits}[scores]
    picked = table.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    total = picked.sum(-1)
    return total / keep.sum(-1).clamp(min=1) if reduce == "mean" else total


def _logprob_hint(logits: torch.Tensor, labels: torch.Tensor, got: torch.Tensor) -> str:
    want = _logprob_variant(logits, labels)
    variants = [
        (-want, "That is the negative log-likelihood (cross-entropy), not the log-probability: no minus sign; a "
                "log-probability is at most 0."),
        (_logprob_variant(logits, labels, reduce="mean"),
         "That is the mean over the answer's tokens: return the sum. An answer's probability is the product of its "
         "tokens' probabilities, so its log-probability is their sum; DPO compares whole answers."),
        (_logprob_variant(logits, labels, mask=False),
         "The prompt and the padding counted (as token 0): keep only the positions whose label is not -100, e.g. "
         "multiply by the mask (labels != -100) before summing."),
        (_logprob_variant(logits, labels, mask=False, reduce="mean"),
         "Sum over the answer's tokens only (labels != -100): the prompt and the padding do not count."),
        (_logprob_variant(logits, labels, unshifted_mask=True),
         "The mask is not shifted with the labels: after the shift, position t holds the log-probability of "
         "labels[:, t + 1], so it counts where labels[:, 1:] != -100."),
        (_logprob_variant(logits, labels, shift=0),
         "The shift is missing: logits at position t predict the token at t + 1, so compare logits[:, :-1] with "
         "labels[:, 1:]."),
        (_logprob_variant(logits, labels, shift=2),
         "Shifted twice: labels come aligned with the inputs, and one shift (logits[:, :-1] against labels[:, 1:]) "
         "makes position t predict token t + 1. Shift once, in one place."),
        (_logprob_variant(logits, labels, shift=-1),
         "Shifted the wrong way: the logits at position t predict the token at t + 1, so drop the last logits and "
         "the first labels (logits[:, :-1], labels[:, 1:])."),
        (_logprob_variant(logits, labels, scores="raw"),
         "Those are raw logits: take log_softmax over the vocabulary first, then pick each label's entry."),
        (_logprob_variant(logits, labels, scores="softmax"),
         "Those are probabilities: take log_softmax (not softmax) over the vocabulary, so that the sum over the "
         "tokens is the log of the product."),
    ]
    for value, hint in variants:
        if _close(got, value.to(got.dtype), atol=1e-3, rtol=1e-4):
            return hint
    return ("Shift once (logits[:, :-1] against labels[:, 1:]), take log_softmax over the vocabulary, pick each "
            "label's log-probability with gather, and sum each row over the positions whose label is not -100.")


def check_completion_logprobs(completion_logprobs, *, thorough: bool = False) -> None:
    """(B,) summed log-probabilities of each row's labelled next tokens: one shift, prompt and padding
    masked, a sum, with gradients, inputs unchanged."""
    observed = observe(probe_completion_logprobs, completion_logprobs, thorough=thorough)
    expect(isinstance(observed, list), "The check could not read what completion_logprobs returned.", "a list",
           type(observed).__name__)
    with quiet():
        for case, seen in zip(_logprob_cases(thorough), observed, strict=True):
            logits, labels = _logprob_inputs(*case)
            label = _logprob_label(case[2])
            rows = len(case[2])
            got = seen["value"]
            expect(type(got) is torch.Tensor, f"completion_logprobs should return a float tensor ({label}).",
                   f"torch.Tensor of shape ({rows},)", seen["found"],
                   "Compute it with torch operations and return the tensor (no .item(), .tolist() or numpy).")
            if tuple(got.shape) != (rows,):
                hint = ("One value per row: sum over the positions (dim=-1) only, not over the batch too."
                        if got.numel() == 1 else "Sum each row over its positions: a (B,) tensor, one value per row.")
                raise CheckFailure(f"completion_logprobs should return one log-probability per row ({label}).",
                                   f"shape ({rows},)", f"shape {tuple(got.shape)}", hint)
            expect(seen["labels_modified"] is False, f"completion_logprobs changed the labels it was given ({label}).",
                   "labels unchanged", "modified",
                   "Do not write into labels (labels[labels == -100] = 0 changes the caller's batch): build a new "
                   "tensor, e.g. labels.clamp(min=0), and a mask labels != -100.")
            expect(seen["logits_modified"] is False, f"completion_logprobs changed the logits it was given ({label}).",
                   "logits unchanged", "modified", "Compute new tensors (log_softmax(...)), no in-place operations.")
            want = reference.completion_logprobs(logits, labels).double()
            if not _close(got, want, atol=1e-3, rtol=1e-4):
                raise CheckFailure(f"The log-probabilities differ from the sum over each row's labelled next tokens "
                                   f"({label}).", _shown(want), _shown(got), _logprob_hint(logits, labels, got))
            expect(seen["requires_grad"] is True, f"The log-probabilities should carry gradients to the logits ({label}).",
                   "requires_grad=True", "no gradient",
                   "DPO trains through them: compute them with torch operations, without torch.no_grad(), .detach(), "
                   ".item() or numpy.")


# --------------------------------------------------------------------------- dpo_loss

# (seed, pairs, beta, spread): log-probabilities of answers of a few tokens, margins of both signs.
_DPO_CASES = [(0, 4, 0.1, 10.0), (1, 3, 0.5, 4.0), (2, 5, 1.0, 2.0)]
_DPO_THOROUGH = [(3, 6, 0.05, 30.0), (4, 2, 2.0, 1.0)]


def _dpo_cases(thorough: bool) -> list:
    return _DPO_CASES + (_DPO_THOROUGH if thorough else [])


def _dpo_inputs(seed: int, pairs: int, beta: float, spread: float) -> list[torch.Tensor]:
    """policy_chosen, policy_rejected, reference_chosen, reference_rejected: (B,) each, negative, the
    policy within ``spread`` of the reference either way (so the margins have both signs)."""
    g = torch.Generator().manual_seed(seed)
    reference_chosen = -(torch.rand(pairs, generator=g) * 30 + 5)
    reference_rejected = -(torch.rand(pairs, generator=g) * 30 + 5)
    policy_chosen = reference_chosen + (torch.rand(pairs, generator=g) * 2 - 1) * spread
    policy_rejected = reference_rejected + (torch.rand(pairs, generator=g) * 2 - 1) * spread
    return [policy_chosen, policy_rejected, reference_chosen, reference_rejected]


def probe_dpo_loss(dpo_loss, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their loss, rewards and the loss's gradients for each case."""
    with quiet():
        observed = []
        for case in _dpo_cases(thorough):
            inputs = _dpo_inputs(*case)
            given = [t.clone() for t in inputs]
            given[0].requires_grad_(True)
            given[1].requires_grad_(True)  # the policy's: the reference's never need gradients
            got = call(dpo_loss, *given, case[2], name="dpo_loss")
            seen = {"found": type(got).__name__ + (f" of length {len(got)}" if type(got) in (tuple, list) else ""),
                    "modified": not all(torch.equal(a.detach(), b) for a, b in zip(given, inputs))}
            if type(got) in (tuple, list) and len(got) == 3:
                loss, chosen, rejected = got
                seen.update({"loss": _values(loss), "loss_found": _describe_tensor(loss),
                             "chosen": _values(chosen), "chosen_found": _describe_tensor(chosen),
                             "rejected": _values(rejected), "rejected_found": _describe_tensor(rejected),
                             "chosen_grad": isinstance(chosen, torch.Tensor) and chosen.requires_grad is True,
                             "rejected_grad": isinstance(rejected, torch.Tensor) and rejected.requires_grad is True,
                             "loss_grad": isinstance(loss, torch.Tensor) and loss.requires_grad is True})
                if seen["loss_grad"] and loss.numel() == 1:
                    loss.reshape(()).backward()
                    seen["gradients"] = [None if t.grad is None else t.grad.detach().double().clone()
                                         for t in given[:2]]
            observed.append(seen)
        return observed


def _dpo_terms(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (t.double() for t in (pc, pr, rc, rr))
    return pc - rc, pr - rr  # the log-ratios of each answer to the reference


def _loss_hint(inputs: list[torch.Tensor], beta: float, got: float) -> str:
    chosen, rejected = _dpo_terms(*inputs, beta)
    margin = beta * (chosen - rejected)
    variants = [
        (-F.logsigmoid(-margin).mean(),
         "The margin's sign is flipped: the loss is -log sigmoid(r_chosen - r_rejected), small when the chosen "
         "answer's reward is the higher."),
        (-F.logsigmoid(beta * margin).mean(),
         "beta is applied twice: the rewards already hold it (r = beta * (policy - reference)), so the loss is "
         "-log sigmoid(r_chosen - r_rejected), with no second beta."),
        (-F.logsigmoid(chosen - rejected).mean(),
         "beta is missing from the loss: it multiplies the log-ratios, -log sigmoid(beta * (log-ratio of chosen "
         "- log-ratio of rejected))."),
        (-F.logsigmoid(margin).sum(), "That is the sum over the pairs: take the mean, so the loss (and the step) "
                                      "does not grow with the batch size."),
        (F.logsigmoid(margin).mean(), "The minus sign is missing: the loss is -log sigmoid(margin), which falls as "
                                      "the margin grows."),
        (-torch.sigmoid(margin).mean(), "The log is missing: the loss is -log sigmoid(margin) (F.logsigmoid)."),
        (-F.logsigmoid(beta * (inputs[0].double() - inputs[1].double())).mean(),
         "The reference is missing: each reward is beta times the log-ratio of the policy to the reference, "
         "beta * (policy - reference); the loss compares those, not the policy's log-probabilities alone."),
        (-F.logsigmoid(beta * ((inputs[0] + inputs[2]).double() - (inputs[1] + inputs[3]).double())).mean(),
         "Subtract the reference's log-probabilities (a log-ratio is a difference of logs), do not add them."),
    ]
    for value, hint in variants:
        if abs(float(value) - got) <= 1e-4 * max(1.0, abs(got)):
            return hint
    return ("r_chosen = beta * (policy_chosen - reference_chosen), r_rejected likewise; the loss is "
            "-F.logsigmoid(r_chosen - r_rejected).mean().")


def _reward_hint(policy: torch.Tensor, ref: torch.Tensor, beta: float, got: torch.Tensor, other: torch.Tensor) -> str:
    ratio = policy.double() - ref.double()
    variants = [
        (ratio, "That is the log-ratio alone: the reward is beta times it, beta * (policy - reference)."),
        (beta * beta * ratio, "beta is applied twice: the reward is beta * (policy - reference), once."),
        (beta * policy.double(), "The reference is missing: the reward is beta * (policy - reference)."),
        (-beta * ratio, "The sign is flipped: the reward is beta * (policy - reference), positive when the policy "
                        "finds the answer more likely than the reference does."),
        (other, "The chosen and rejected rewards are swapped: return (loss, chosen_rewards, rejected_rewards)."),
    ]
    for value, hint in variants:
        if _close(got, value, atol=1e-4):
            return hint
    return "Each reward is beta * (policy log-probability - reference log-probability) of that answer, (B,)."


def check_dpo_loss(dpo_loss, *, thorough: bool = False) -> None:
    """Mean -log sigmoid(r_chosen - r_rejected), r = beta * (policy - reference); the (B,) rewards
    detached; gradients through the loss only."""
    observed = observe(probe_dpo_loss, dpo_loss, thorough=thorough)
    expect(isinstance(observed, list), "The check could not read what dpo_loss returned.", "a list",
           type(observed).__name__)
    with quiet():
        for case, seen in zip(_dpo_cases(thorough), observed, strict=True):
            inputs = _dpo_inputs(*case)
            beta, pairs = case[2], case[1]
            label = f"{pairs} pairs, beta {beta}"
            expect("loss" in seen, f"dpo_loss should return a tuple (loss, chosen_rewards, rejected_rewards) "
                                   f"({label}).", "tuple of 3", seen.get("found"))
            expect(seen["modified"] is False, f"dpo_loss changed the log-probabilities it was given ({label}).",
                   "inputs unchanged", "modified", "Compute new tensors: no in-place operations (-=, .mul_) on them.")
            loss = seen["loss"]
            expect(type(loss) is torch.Tensor and loss.numel() == 1,
                   f"dpo_loss's loss should be one number, a 0-d tensor ({label}).", "torch.Tensor of shape ()",
                   seen["loss_found"], "Average the per-pair losses with .mean(); return the tensor (no .item()), "
                                       "so that it can be backpropagated.")
            want_loss, want_chosen, want_rejected = reference.dpo_loss(*inputs, beta)
            for name, want in (("chosen", want_chosen), ("rejected", want_rejected)):
                got = seen[name]
                expect(type(got) is torch.Tensor and tuple(got.shape) == (pairs,),
                       f"dpo_loss's {name} rewards should be a (B,) tensor, one per pair ({label}).",
                       f"torch.Tensor of shape ({pairs},)", seen[f"{name}_found"],
                       "Return each pair's reward, beta * (policy - reference), not their mean.")
            value = float(loss.reshape(()))
            if abs(value - want_loss.item()) > 1e-4 * max(1.0, abs(want_loss.item())):
                raise CheckFailure(f"The DPO loss differs ({label}).", round(want_loss.item(), 5), round(value, 5),
                                   _loss_hint(inputs, beta, value))
            for name, want, policy, ref, other in (("chosen", want_chosen, inputs[0], inputs[2], want_rejected),
                                                  ("rejected", want_rejected, inputs[1], inputs[3], want_chosen)):
                got = seen[name]
                if not _close(got, want.double(), atol=1e-4):
                    raise CheckFailure(f"The {name} rewards differ ({label}).", _shown(want), _shown(got),
                                       _reward_hint(policy, ref, beta, got, other.double()))
            expect(seen["chosen_grad"] is False and seen["rejected_grad"] is False,
                   f"The rewards should be detached ({label}): they are for watching, not for training.",
                   "requires_grad=False", "rewards attached to the graph",
                   "Return chosen.detach() and rejected.detach(): the gradient flows through the loss only, and a "
                   "logged tensor that keeps its graph keeps every step's activations in memory.")
            expect(seen["loss_grad"] is True, f"The loss should carry gradients to the policy's log-probabilities "
                                              f"({label}).", "requires_grad=True", "no gradient",
                   "Compute the loss from the policy's tensors themselves, not from the detached rewards or "
                   "numbers (.item()).")
            gradients = seen.get("gradients")
            expect(isinstance(gradients, list) and len(gradients) == 2,
                   f"The check could not backpropagate dpo_loss's loss ({label}).", "gradients", type(gradients).__name__)
            policy = [inputs[0].clone().requires_grad_(True), inputs[1].clone().requires_grad_(True)]
            reference.dpo_loss(*policy, inputs[2], inputs[3], beta)[0].backward()
            for name, want, got in zip(("chosen", "rejected"), policy, gradients):
                expect(type(got) is torch.Tensor and _close(got, want.grad.double(), atol=1e-6, rtol=1e-4),
                       f"The loss's gradient with respect to the policy's {name} log-probabilities differs ({label}).",
                       _shown(want.grad), _shown(got) if type(got) is torch.Tensor else "no gradient",
                       "Build the loss from the policy's log-probabilities with torch operations; detach only the "
                       "rewards you return.")


# --------------------------------------------------------------------------- reference_logprobs

# (prompt, chosen, rejected) pairs in the byte-level tokenizer's ChatML; each case takes some.
_PAIRS = [("Headline: rain in Leeds?", "Leeds floods", "It rained a lot in the city of Leeds today."),
          ("Headline: bank rates?", "Bank holds rates at 5%", "The bank said that rates will stay."),
          ("Headline: new phone?", "Apple unveils phone", "A company has made a new phone."),
          ("Headline: cup final?", "Arsenal win the cup", "There was a football match on Sunday.")]
# (pair indices, the model's mode before the call)
_REFERENCE_CASES = [([0, 1], "train"), ([2], "eval")]
_REFERENCE_THOROUGH = [([3, 0, 2], "train")]


def _reference_cases(thorough: bool) -> list:
    return _REFERENCE_CASES + (_REFERENCE_THOROUGH if thorough else [])


def tiny_lora_model():
    """``(model, tokenizer)``: the tiny random Llama with a LoRA adapter (r 4) whose B matrices are not
    zero, so the model with its adapter differs from its reference, the model without it."""
    from ftlib.generative import sft
    from ftlib.models import load_causal_lm

    with quiet():
        torch.manual_seed(0)
        model, tokenizer = load_causal_lm("tiny-llama")
        torch.manual_seed(1)
        model = sft.add_lora(model, r=4, alpha=8)
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model, tokenizer


def _reference_batch(tokenizer, indices: list[int]) -> dict:
    """Rows chosen, rejected, chosen... of the pairs, right-padded: ``input_ids``, ``attention_mask``, ``labels`` (B, T)."""
    pairs = [reference.build_preference_example(tokenizer, *_PAIRS[i], max_length=128) for i in indices]
    batch = reference.collate_preferences(pairs, tokenizer.pad_token_id)
    return {k: batch[k].flatten(0, 1) for k in ("input_ids", "attention_mask", "labels")}


def _lora_layers(model: nn.Module) -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _adapter_off(model: nn.Module) -> bool:
    layers = _lora_layers(model)
    return bool(layers) and all(bool(layer.disable_adapters) for layer in layers)


def _adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def probe_reference_logprobs(reference_logprobs, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their log-probabilities for each batch; at each forward pass of the
    decoder, the mode, the gradient state and whether the adapter was off; the model after the call."""
    with quiet():
        observed = []
        for indices, mode in _reference_cases(thorough):
            model, tokenizer = tiny_lora_model()
            model.train(mode == "train")
            batch = _reference_batch(tokenizer, indices)
            given = {k: v.clone() for k, v in batch.items()}
            adapter = _adapter_state(model)
            layers = len(_lora_layers(model))
            calls = []
            decoder = model.get_base_model().model
            hook = decoder.register_forward_pre_hook(
                lambda module, args: calls.append([bool(module.training), bool(torch.is_grad_enabled()),
                                                   _adapter_off(model)]))
            try:
                got = call(reference_logprobs, model, given, name="reference_logprobs")
            finally:
                hook.remove()
            after = _adapter_state(model)
            observed.append({
                "value": _values(got), "found": _describe_tensor(got),
                "requires_grad": isinstance(got, torch.Tensor) and got.requires_grad is True,
                "calls": calls, "training_after": bool(model.training),
                "adapter_off_after": _adapter_off(model), "layers_after": len(_lora_layers(model)), "layers": layers,
                "adapter_changed": sorted(after) != sorted(adapter) or
                not all(torch.equal(after[k], adapter[k]) for k in adapter),
                "batch_modified": not all(torch.equal(given[k], batch[k]) for k in batch)})
        return observed


def check_reference_logprobs(reference_logprobs, *, thorough: bool = False) -> None:
    """The (B,) log-probabilities of the model with its LoRA adapter off: eval mode, no gradients; the
    model's mode and its adapter (on, unchanged) restored."""
    observed = observe(probe_reference_logprobs, reference_logprobs, thorough=thorough)
    expect(isinstance(observed, list), "The check could not read what reference_logprobs returned.", "a list",
           type(observed).__name__)
    with quiet():
        for (indices, mode), seen in zip(_reference_cases(thorough), observed, strict=True):
            model, tokenizer = tiny_lora_model()
            batch = _reference_batch(tokenizer, indices)
            rows = batch["input_ids"].shape[0]
            label = f"a LoRA model in {mode} mode, a batch of {rows} answers"
            got = seen["value"]
            expect(type(got) is torch.Tensor and tuple(got.shape) == (rows,),
                   f"reference_logprobs should return a (B,) tensor, one log-probability per row ({label}).",
                   f"torch.Tensor of shape ({rows},)", seen["found"],
                   "Run the model on the batch and pass its logits and the labels to completion_logprobs.")
            calls = seen["calls"]
            expect(isinstance(calls, list) and len(calls) > 0, f"reference_logprobs never ran the model ({label}).",
                   "model(input_ids=..., attention_mask=...)", "no forward pass",
                   "Call the model you are given, with its adapter disabled: with model.disable_adapter(): ...")
            model.eval()
            want = reference.reference_logprobs(model, batch).double()
            with torch.no_grad():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            adapter_on = reference.completion_logprobs(logits, batch["labels"]).double()
            if not _close(got, want, atol=1e-3):
                if _close(got, adapter_on, atol=1e-3) or not any(off for _, _, off in calls):
                    raise CheckFailure(f"These are the log-probabilities of the model with its adapter on ({label}).",
                                       _shown(want), _shown(got),
                                       "The reference is the model before preference tuning: the same weights "
                                       "without the LoRA update. Run it inside `with model.disable_adapter():` "
                                       "(model.get_base_model() still holds the adapter's layers).")
                raise CheckFailure(f"The reference's log-probabilities differ ({label}).", _shown(want), _shown(got),
                                   "Inside `with model.disable_adapter():`, run model(input_ids=..., attention_mask=...) "
                                   "and return completion_logprobs(logits, batch['labels']).")
            expect(all(not grad for _, grad, _ in calls) and seen["requires_grad"] is False,
                   f"The reference should run without gradients ({label}).", "torch.no_grad()",
                   "gradients recorded", "Wrap the forward pass in `with torch.no_grad():`: the reference is never "
                                         "trained, and a graph would keep all its activations in memory.")
            expect(all(not training for training, _, _ in calls),
                   f"The reference should run in eval mode ({label}).", "eval mode during the forward pass",
                   "train mode", "Call model.eval() before the forward pass (dropout off), and put the mode back after.")
            expect(seen["training_after"] is (mode == "train"),
                   f"reference_logprobs should leave the model in the mode it found it in ({label}).", mode,
                   "train" if seen["training_after"] else "eval",
                   "Remember was_training = model.training at the start and call model.train(was_training) at the "
                   "end (in a finally block), rather than model.train() or model.eval().")
            expect(seen["layers_after"] == seen["layers"] and seen["adapter_changed"] is False,
                   f"reference_logprobs changed or removed the adapter ({label}).", "the adapter's weights unchanged",
                   "changed" if seen["layers_after"] == seen["layers"] else "removed",
                   "Disable the adapter for the forward pass only (with model.disable_adapter():); unload(), "
                   "merge_and_unload() or zeroing lora_B destroys what the policy learned.")
            expect(seen["adapter_off_after"] is False,
                   f"reference_logprobs left the adapter disabled ({label}): the policy is then the reference.",
                   "adapter enabled after the call", "adapter disabled",
                   "Use the context manager `with model.disable_adapter():`, which enables the adapter again when "
                   "it exits, even after an error; disable_adapter_layers() needs enable_adapter_layers() after.")
            expect(seen["batch_modified"] is False, f"reference_logprobs changed the batch it was given ({label}).",
                   "batch unchanged", "modified", "Read the batch; do not write into its tensors.")


# --------------------------------------------------------------------------- preference_accuracy

_ACCURACY_CASES = [
    ([1.0, 0.5, -0.2, 0.3], [0.5, 0.7, -0.3, 0.3]),  # the last pair is a tie
    ([0.2, 0.1, 0.0], [0.1, 0.3, -1.0]),
    ([0.0, 0.0, 0.4, -2.0, 1.5], [0.0, -0.1, 0.5, -3.0, 1.5]),
]


def _accuracy_cases(thorough: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cases = [(torch.tensor(c), torch.tensor(r)) for c, r in _ACCURACY_CASES]
    if thorough:
        g = torch.Generator().manual_seed(0)
        chosen = torch.randn(500, generator=g).round(decimals=1)
        cases += [(chosen, torch.randn(500, generator=g).round(decimals=1)), (torch.zeros(4), torch.zeros(4)),
                  (torch.ones(2), torch.zeros(2))]
    return cases


def probe_preference_accuracy(preference_accuracy, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their accuracy for each case, and whether the rewards survived."""
    with quiet():
        observed = []
        for chosen, rejected in _accuracy_cases(thorough):
            given = chosen.clone(), rejected.clone()
            got = call(preference_accuracy, *given, name="preference_accuracy")
            if isinstance(got, np.floating):  # np.mean(...) gives one: a number all the same
                got = float(np.asarray(got, dtype=np.float64))
            observed.append({"value": got if type(got) in (float, int, bool) else None, "type": _describe_tensor(got),
                             "tensor": _values(got) if type(got) is torch.Tensor and got.numel() == 1 else None,
                             "modified": not (torch.equal(given[0], chosen) and torch.equal(given[1], rejected))})
        return observed


def check_preference_accuracy(preference_accuracy, *, thorough: bool = False) -> None:
    """The share of pairs whose chosen reward is strictly the higher, as a Python float; ties are wrong."""
    observed = observe(probe_preference_accuracy, preference_accuracy, thorough=thorough)
    expect(isinstance(observed, list), "The check could not read what preference_accuracy returned.", "a list",
           type(observed).__name__)
    for (chosen, rejected), seen in zip(_accuracy_cases(thorough), observed, strict=True):
        label = f"{len(chosen)} pairs"
        if seen["tensor"] is not None:
            raise CheckFailure(f"preference_accuracy should return a Python float, not a tensor ({label}).", "float",
                               seen["type"], "Convert the result with .item(): a float prints, formats and averages "
                                             "as a number, and holds no tensor or graph.")
        got = seen["value"]
        expect(type(got) is float, f"preference_accuracy should return a Python float ({label}).", "float",
               seen["type"], "Return (chosen > rejected).float().mean().item().")
        expect(seen["modified"] is False, f"preference_accuracy changed the rewards it was given ({label}).",
               "unchanged", "modified", "Compare them; do not write into them.")
        want = reference.preference_accuracy(chosen, rejected)
        if abs(got - want) <= 1e-6:
            continue
        n = len(chosen)
        variants = [
            ((chosen >= rejected).double().mean().item(),
             "Ties count as right: a pair whose two rewards are equal shows no preference, so count only chosen > "
             "rejected (strictly). Before training every reward is 0: the accuracy must be 0, not 1."),
            ((chosen < rejected).double().mean().item(),
             "The comparison is reversed: count the pairs whose chosen reward is the higher (chosen > rejected)."),
            ((chosen > rejected).double().sum().item(), f"That is a count: divide by the number of pairs ({n})."),
            (100 * (chosen > rejected).double().mean().item(), "That is a percentage: return the share, between 0 and 1."),
            (float(chosen.double().mean() > rejected.double().mean()),
             "That compares the mean rewards: compare each pair's two rewards, then take the share of pairs."),
        ]
        hint = next((h for value, h in variants if abs(value - got) <= 1e-6),
                    "The share of pairs with chosen > rejected: (chosen > rejected).float().mean().item().")
        raise CheckFailure(f"The preference accuracy differs ({label}: chosen {_shown(chosen[:6])}, rejected "
                           f"{_shown(rejected[:6])}).", round(want, 4), round(got, 4), hint)
