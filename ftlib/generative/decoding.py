"""Decoding: from a causal LM's next-token scores to text.

A causal LM gives, for every position, scores (logits) over the vocabulary for the token
that comes next. Generating text is a loop: pick a token, append it, ask again. Two
choices make that loop what it is:

* **Which token.** Greedy takes the most likely one: deterministic, and what evaluations
  use. Sampling draws from the distribution: the *temperature* divides the logits first
  (below 1 sharpens the distribution, above 1 flattens it, 0 is greedy), and *nucleus*
  (top-p) sampling keeps only the smallest set of most likely tokens whose probabilities
  reach ``top_p``, so the long tail of unlikely tokens is never drawn. Temperature comes
  first: it changes which tokens the nucleus holds. A draw is reproducible only with a
  seeded ``torch.Generator``.
* **How much work per token.** Without a cache every step runs the model over the whole
  sequence so far: step ``t`` costs ``t`` positions, and ``n`` new tokens cost about
  ``n**2 / 2``. Each layer's attention keys and values of past positions never change, so
  the model keeps them (the *KV cache*): one forward pass over the prompt, then one
  position per new token, linear in ``n``.

:func:`sample_next_token` and :func:`generate_with_cache` are course notebook 10's
exercises 2 and 3, written out; `ftlib.generative.sft.generate` is the batched greedy
decoder the jobs use.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ftlib import arguments

__all__ = ["sample_next_token", "generate_with_cache"]


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """One next token per row of ``logits``: greedy at temperature 0, else a nucleus sample.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, V)`` scores for the next token of ``B`` sequences.
    temperature : float
        0 for greedy (the most likely token); otherwise the logits are divided by it
        before the softmax.
    top_p : float
        In (0, 1]: sample only from the smallest set of most likely tokens whose
        probabilities (after the temperature) add up to at least ``top_p``; the most
        likely token is always kept. 1 keeps every token.
    generator : torch.Generator, optional
        The random source of the draw: the same seed gives the same tokens.

    Returns
    -------
    torch.Tensor
        ``(B,)`` token ids (int64), on the device of ``logits``.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be a (batch, vocabulary) tensor, got "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}.")
    arguments.number(temperature, "temperature", minimum=0, inclusive=True, meaning="0 for greedy")
    arguments.number(top_p, "top_p", minimum=0, meaning="the share of probability kept, 1 for all")
    if top_p > 1:
        raise arguments.ArgumentError("top_p", "must be at most 1 (1 keeps every token)", top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # A token stays if the tokens more likely than it hold less than top_p: the smallest
        # set that reaches top_p, and always the first one.
        keep = sorted_probs.cumsum(dim=-1) - sorted_probs < top_p
        keep[:, 0] = True
        choice = torch.multinomial(sorted_probs * keep, 1, generator=generator)  # renormalizes
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_with_cache(model: nn.Module, input_ids: torch.Tensor | Sequence[int], max_new_tokens: int,
                        eos_token_id: int | None) -> list[int]:
    """Greedy decoding with the model's KV cache: the new tokens, ``eos_token_id`` included if reached.

    One forward pass over the prompt fills the cache; then each step feeds only the token
    just chosen. The tokens are the ones ``model.generate(do_sample=False)`` gives.

    Parameters
    ----------
    model : nn.Module
        A transformers causal LM (or a peft model around one), in eval mode.
    input_ids : torch.Tensor or sequence of int
        The prompt: ``(T,)``, ``(1, T)`` or a list of token ids.
    max_new_tokens : int
        At most this many new tokens.
    eos_token_id : int or None
        Stop after this token (None: never stop early).
    """
    arguments.integer(max_new_tokens, "max_new_tokens", minimum=0)
    device = next(model.parameters()).device
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=device).reshape(1, -1)
    if ids.shape[1] == 0:
        raise ValueError("input_ids is empty: the prompt needs at least one token.")
    new: list[int] = []
    if max_new_tokens == 0:
        return new
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    while True:
        token = int(out.logits[0, -1].argmax())
        new.append(token)
        if token == eos_token_id or len(new) == max_new_tokens:
            return new
        step = torch.tensor([[token]], device=device)
        out = model(input_ids=step, cache=out.cache, use_cache=True, logits_to_keep=1)
