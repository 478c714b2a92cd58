"""Supervised fine-tuning (SFT) of a generative model: course notebook 09.

A chat model is trained on conversations rendered with its own chat template, one user
turn (the prompt) and one assistant turn (the completion). This module builds those
examples, batches them, computes the loss on the answer only, adds LoRA adapters (peft)
and evaluates two ways: by the likelihood of each answer choice and by greedy generation.
Training itself is ``ftlib.train.fit``: :class:`SFTModel` and :func:`make_sft_loader` make
a causal LM look like any other model to it (batches with ``labels``, one logit row per
label), so progress bars, history, seeds and early stopping come for free.

What matters, and why:

* The same template in training and inference. The model only ever sees text in that
  format; a prompt rendered differently at test time is out of distribution.
* Labels ``-100`` on the prompt: the model should learn to answer, not to write reviews.
* The end-of-turn token stays in the labels, or the model never learns to stop. SmolLM2
  pads with that same token, so masking "padding" by token id would mask it too: padding
  is masked by position instead.
* Right padding for training, left padding for batched generation (new tokens are
  appended on the right, so the prompt must end there).
* The vocabulary projection (576 x 49,152 for SmolLM2) is computed only where a label
  exists: about a fifth of the compute of a step and most of its memory.

It does not pack sequences or train on multi-turn chats; TRL does both, for GPUs.
"""
from __future__ import annotations

import random
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ftlib import arguments, devices
from ftlib.techniques import adapters
from ftlib.techniques.adapters import GENERATIVE_RANK, GENERATIVE_TARGETS

__all__ = [
    "SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "chat_messages",
    "end_of_turn_id",
    "prompt_ids",
    "build_sft_example",
    "collate_sft",
    "pad_to_multiple",
    "collate_for_generation",
    "causal_lm_loss",
    "labelled_logits",
    "SFTModel",
    "make_sft_loader",
    "SFTLoader",
    "add_lora",
    "merge_lora",
    "save_adapter",
    "save_for_pipeline",
    "load_adapter",
    "score_choices",
    "classify",
    "choice_scores",
    "greedy_generate",
    "generate",
    "bf16_is_native",
]

IGNORE_INDEX = -100  # what cross_entropy skips

# SmolLM2's template adds a ~20-token default system prompt when none is given. A short
# explicit one keeps the format the model was tuned on (a system turn first) at a third
# of the cost. Training and inference both go through chat_messages, so they agree.
SYSTEM_PROMPT = "You are a helpful assistant."


def chat_messages(prompt: str, completion: str | None = None, *, system: str | None = SYSTEM_PROMPT) -> list[dict]:
    """The conversation: a system turn, the user's ``prompt`` and, if given, the reply."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    if completion is not None:
        messages.append({"role": "assistant", "content": completion})
    return messages


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn: ``<|im_end|>`` in ChatML, else EOS."""
    token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
        return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has neither <|im_end|> nor an EOS token to end a turn with.")
    return tokenizer.eos_token_id


def prompt_ids(tokenizer, prompt: str | Sequence[dict]) -> list[int]:
    """The tokens of the rendered prompt, up to and including the assistant header.

    ``prompt`` is the user's text (with the short system turn, see :func:`chat_messages`) or
    the conversation so far, a list of ``{"role", "content"}`` messages rendered as given.
    """
    messages = chat_messages(prompt) if isinstance(prompt, str) else list(prompt)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template has them already


def build_sft_example(tokenizer, prompt: str, completion: str, max_length: int) -> dict:
    """One training example: the chat-rendered prompt, then the answer and end of turn.

    ``labels`` are ``-100`` on every prompt token and equal to ``input_ids`` on the
    completion's tokens and the end-of-turn token that follows them (what the template
    writes after it, ChatML's newline, is never generated, so it is left out). Longer
    than ``max_length``? The prompt loses tokens from its start, never the completion.

    Examples
    --------
    >>> from ftlib.models import tiny_chat_tokenizer
    >>> tok = tiny_chat_tokenizer()
    >>> ex = build_sft_example(tok, "Hi?", "yes", max_length=64)
    >>> tok.decode([t for t in ex["labels"] if t != -100])
    'yes<|im_end|>'
    """
    arguments.integer(max_length, "max_length", minimum=2)
    answer = tokenizer(completion, add_special_tokens=False)["input_ids"] + [end_of_turn_id(tokenizer)]
    room = max_length - len(answer)
    if room < 1:
        raise ValueError(f"The completion alone takes {len(answer)} tokens (with the end of turn), more than "
                         f"max_length={max_length} allows with a prompt; raise max_length.")
    context = prompt_ids(tokenizer, prompt)[-room:]
    input_ids = context + answer
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
            "labels": [IGNORE_INDEX] * len(context) + answer}


def _pad(rows: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + list(r) if left else list(r) + [value] * (width - len(r))
                         for r in rows], dtype=torch.long)


def collate_sft(examples: Sequence[dict], pad_token_id: int) -> dict:
    """Right-pad a list of :func:`build_sft_example` dicts into ``(B, T)`` tensors.

    Padding gets attention 0 and label -100, decided by position (the pad token may be
    the end-of-turn token, whose real occurrences must stay in the loss).
    """
    if not examples:
        raise ValueError("collate_sft needs at least one example.")
    return {"input_ids": _pad([e["input_ids"] for e in examples], pad_token_id, left=False),
            "attention_mask": _pad([e["attention_mask"] for e in examples], 0, left=False),
            "labels": _pad([e["labels"] for e in examples], IGNORE_INDEX, left=False)}


def pad_to_multiple(batch: dict, multiple: int | None, pad_token_id: int) -> dict:
    """Pad a collated batch on the right until its length is a multiple of ``multiple``.

    On a CPU, oneDNN compiles and caches a kernel (and a reordered copy of the weights)
    for each new matrix shape: batches of every length from 20 to 120 tokens kept adding
    to the memory of a run, step after step. Rounding lengths up to 16 leaves a handful of
    shapes, for at most 15 padding tokens per row, which the masks make inert.
    """
    width = batch["input_ids"].shape[1]
    extra = (-width) % multiple if multiple else 0
    if not extra:
        return batch
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    return {k: torch.cat([v, v.new_full((v.shape[0], extra), fill[k])], dim=1) if k in fill else v
            for k, v in batch.items()}


def collate_for_generation(prompts: Sequence[Sequence[int]], pad_token_id: int) -> dict:
    """Left-pad token lists so that every prompt ends at the last column."""
    return {"input_ids": _pad(prompts, pad_token_id, left=True),
            "attention_mask": _pad([[1] * len(p) for p in prompts], 0, left=True)}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each labelled token given the tokens before it.

    ``logits`` (B, T, V) and ``labels`` (B, T) are aligned with the inputs: position t
    predicts token t + 1, so the shift happens here, once.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, V) and labels (B, T); got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}.")
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


# Where the CPU multiplies bf16 matrices in hardware: one detection for fit and SFT.
def bf16_is_native(device: torch.device | str = "cpu") -> bool:
    """True where bf16 runs natively on ``device``: what ``Runtime(precision="auto")`` picks.

    One answer with :func:`ftlib.devices.resolve_precision`: on a CPU that needs the
    AVX-512 BF16 or AMX flags *and* a PyTorch dispatching AVX-512 kernels (an
    ``ATEN_CPU_CAPABILITY=avx2`` build emulates bf16, slower than fp32).
    """
    return devices.resolve_precision("auto", device) == "bf16"


def _autocast(bf16: bool, device):
    """bf16 autocast on ``device`` (nothing for fp32): the same context as ``fit``'s, from ftlib.devices."""
    return devices.autocast("bf16" if bf16 else "fp32", device)


def labelled_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    target_mask: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, V)`` only at the N positions where ``target_mask`` (B, T) is True.

    The decoder gives hidden states (B, T, H); the output layer (H x V) is applied to the
    selected rows only. At every position it would cost B x T x V floats (16 x 64 x
    49,152 x 4 bytes = 200 MB for one SmolLM2 batch, and as much again for its gradient).
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # through peft
    hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return lm.get_output_embeddings()(hidden[target_mask])


class SFTModel(nn.Module):
    """A causal LM seen by ``ftlib.train.fit``: logits only at the labelled positions.

    ``forward(input_ids, attention_mask, target_mask)`` returns ``(N, V)`` logits, one row
    per ``True`` in ``target_mask`` (B, T), the positions whose next token is a label;
    the batch's ``labels`` are those N next tokens (see :func:`make_sft_loader`), so
    fit's plain cross-entropy is the answer-only loss and its accuracy is next-token
    accuracy on the answers. ``bf16=True`` runs the forward under bf16 autocast.
    """

    def __init__(self, model: nn.Module, *, bf16: bool = False) -> None:
        super().__init__()
        self.model, self.bf16 = model, bf16

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        with _autocast(self.bf16, input_ids.device):
            logits = labelled_logits(self.model, input_ids, attention_mask, target_mask)
        return logits.float()  # (N, V)


def _fit_batch(batch: dict) -> dict:
    """A collated batch, reshaped for fit: ``target_mask`` (B, T) and ``labels`` (N,)."""
    labels = batch["labels"]
    target_mask = torch.zeros_like(labels, dtype=torch.bool)
    target_mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "target_mask": target_mask, "labels": labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]}


class SFTLoader:
    """Batches of SFT examples for ``fit``: right-padded, then as :class:`SFTModel` wants them.

    Examples are grouped by length, rounded up to a multiple of ``pad_to_multiple_of``
    tokens (16 when it is None), and a batch holds one group's examples only: padding costs
    less than 16 tokens a row. Each group is cut into batches of ``batch_size`` rows, or
    fewer where ``max_tokens`` says so: rows x rounded length stays within ``max_tokens``
    (one row at least), since the memory of a training step follows the tokens in its batch
    and a few long examples would otherwise set the peak of the whole run. So
    ``batch_size=4, max_tokens=128`` gives two rows of up to 64 tokens, or one longer row.

    With ``shuffle``, every epoch shuffles the examples within each group and the order of
    all batches (seeded). The number of batches depends on the lengths only: ``len()`` is the
    same in every epoch, and :meth:`batch_sizes` says how many batches have how many rows.
    A class, not a generator, so that each epoch iterates afresh.
    """

    def __init__(self, examples: Sequence[dict], pad_token_id: int, *, batch_size: int = 8,
                 shuffle: bool = False, seed: int = 0, max_tokens: int | None = None,
                 pad_to_multiple_of: int | None = 16) -> None:
        if not examples:
            raise ValueError("make_sft_loader needs at least one example.")
        arguments.integer(batch_size, "batch_size")
        self.examples, self.pad_token_id, self.batch_size = list(examples), pad_token_id, batch_size
        self.shuffle, self.max_tokens, self._rng = shuffle, max_tokens, random.Random(seed)
        self.multiple = pad_to_multiple_of
        width = pad_to_multiple_of or 16
        groups: dict[int, list[int]] = {}
        for i in sorted(range(len(self.examples)), key=lambda i: len(self.examples[i]["input_ids"])):
            length = len(self.examples[i]["input_ids"])
            groups.setdefault(length + (-length) % width, []).append(i)
        self._groups = groups  # rounded length -> indices, shortest first

    def _rows(self, rounded_length: int) -> int:
        if self.max_tokens is None:
            return self.batch_size
        return max(1, min(self.batch_size, self.max_tokens // rounded_length))

    def __len__(self) -> int:
        return sum(-(-len(group) // self._rows(length)) for length, group in self._groups.items())

    def batch_sizes(self) -> dict[int, int]:
        """Rows per batch -> how many batches have that many rows (the same every epoch)."""
        counts: dict[int, int] = {}
        for length, group in self._groups.items():
            rows = self._rows(length)
            for start in range(0, len(group), rows):
                size = min(rows, len(group) - start)
                counts[size] = counts.get(size, 0) + 1
        return dict(sorted(counts.items()))

    def _batches(self) -> list[list[int]]:
        batches = []
        for length, group in self._groups.items():
            group = list(group)
            if self.shuffle:
                self._rng.shuffle(group)
            rows = self._rows(length)
            batches += [group[start:start + rows] for start in range(0, len(group), rows)]
        if self.shuffle:
            self._rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterable[dict]:
        for indices in self._batches():
            batch = collate_sft([self.examples[i] for i in indices], self.pad_token_id)
            yield _fit_batch(pad_to_multiple(batch, self.multiple, self.pad_token_id))


def make_sft_loader(examples: Sequence[dict], pad_token_id: int, **options) -> SFTLoader:
    """An :class:`SFTLoader` of ``examples`` (its options: ``batch_size``, ``shuffle``, ``seed``,
    ``max_tokens``, ``pad_to_multiple_of``): what ``ftlib.data.make_loader`` is to a classifier."""
    return SFTLoader(examples, pad_token_id, **options)


def add_lora(model: nn.Module, *, r: int = GENERATIVE_RANK, alpha: int = 2 * GENERATIVE_RANK, dropout: float = 0.0,
             target_modules: str | list[str] = GENERATIVE_TARGETS):
    """Wrap ``model`` with LoRA adapters (peft) and freeze everything else.

    Each targeted ``Linear`` W gets a trainable low-rank update ``(alpha / r) * B @ A``
    (A: r x in, B: out x r, B starting at zero, so the model starts unchanged). The
    default targets every linear layer of the blocks (attention and MLP), not peft's
    historical query/value only; the output layer is not adapted. No dropout by default:
    peft's dropout keeps a dropped-out copy of every adapted layer's input for the
    backward pass, which costs memory this CPU budget does not have. The defaults are the
    generative job's (``ftlib.techniques.adapters``, where classifiers get theirs too).
    """
    return adapters.add_lora(model, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
                             task_type="CAUSAL_LM")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the weights and return the plain model: keep the result.

    ``merge_and_unload`` returns the merged model; the peft wrapper it was called on
    should not be used afterwards.
    """
    if not hasattr(model, "merge_and_unload"):
        raise TypeError(f"merge_lora needs a peft model (see add_lora); got {type(model).__name__}.")
    return model.merge_and_unload()


def save_for_pipeline(model: nn.Module, tokenizer, path) -> None:
    """Save a plain (merged) model with its tokenizer: a folder ``transformers.pipeline`` uses alone.

    ``pipeline("text-generation", model=path)`` then loads it offline with no ftlib code,
    applies the chat template to a list of messages and stops at the end of the turn:
    the generation config names the end-of-turn token (:func:`end_of_turn_id`) and the
    padding token, and asks for greedy decoding, as ftlib's own generation does.
    """
    if hasattr(model, "peft_config"):
        raise TypeError("save_for_pipeline needs a plain model: fold the adapter in first (merge_lora), or save "
                        "the adapter alone with save_adapter.")
    stop = end_of_turn_id(tokenizer)
    config = model.generation_config
    config.eos_token_id, config.pad_token_id, config.do_sample = stop, tokenizer.pad_token_id, False
    for option in ("temperature", "top_p", "top_k"):  # sampling settings that greedy decoding would warn about
        if hasattr(config, option):
            setattr(config, option, None)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))


def save_adapter(model: nn.Module, path) -> None:
    """Save the adapter only: ``adapter_config.json`` + ``adapter_model.safetensors``.

    Small next to the model: ``r x (d_in + d_out)`` fp32 numbers per adapted layer (for
    SmolLM2-135M at r=16 on every linear layer, a few percent of the fp32 weights' bytes).

    Refuses a peft model whose adapters `merge_lora` has already folded into the base
    weights: peft would write an adapter with no tensors, which loads as "no change".
    """
    if not hasattr(model, "peft_config"):
        raise TypeError(f"save_adapter needs a peft model (see add_lora); got {type(model).__name__}.")
    if not any("lora_" in name for name, _ in model.named_parameters()):
        raise ValueError("This peft model has no LoRA weights left: merge_lora folded them into the base "
                         "weights, and saving would write an empty adapter. Save the adapter before merging, "
                         "or save the merged model merge_lora returned (model.save_pretrained(folder)).")
    model.save_pretrained(str(path))


def load_adapter(model: nn.Module, path, *, trainable: bool = False):
    """Put the adapter saved at ``path`` on top of ``model`` (the same base weights)."""
    from peft import PeftModel

    with adapters.quiet_peft():
        return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


class _eval_mode:
    """Eval mode and no gradients inside; the model's previous mode is put back."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.no_grad = model, torch.no_grad()

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are: after ``fit`` on a GPU, batches must go there too."""
    return next(model.parameters()).device


def _sequence_log_probs(model: nn.Module, batch: dict) -> torch.Tensor:
    """Summed log-probability of the labelled tokens of each row of a collated batch: (B,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    labels = batch["labels"][:, 1:]
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (picked * (labels != IGNORE_INDEX)).sum(dim=1)


def _choice_example(tokenizer, prompt: str, choice: str, max_length: int) -> dict:
    """An SFT example whose labels are the choice's tokens, without the end of turn.

    An instruct model that would rather answer in a sentence ("This review is
    positive.") is not penalised for it: only the choice's own tokens are scored.
    """
    example = build_sft_example(tokenizer, prompt, choice, max_length)
    example["labels"][-1] = IGNORE_INDEX
    return example


def score_choices(model: nn.Module, tokenizer, prompt: str, choices: Sequence[str]) -> torch.Tensor:
    """Summed log-probability of each choice's tokens as the start of the assistant's reply: (C,).

    Classification without a classifier: the predicted class is the most likely reply.
    The model runs in eval mode without gradients; its previous mode is restored.
    """
    if not choices:
        raise ValueError("score_choices needs at least one choice.")
    examples = [_choice_example(tokenizer, prompt, c, max_length=10**9) for c in choices]
    batch = devices.to_device(collate_sft(examples, tokenizer.pad_token_id), _device_of(model))
    with _eval_mode(model):
        return _sequence_log_probs(model, batch).cpu()


def classify(model: nn.Module, tokenizer, prompts: Sequence[str], choices: Sequence[str], **options) -> list[int]:
    """The index of the most likely choice for each prompt (options: see :func:`choice_scores`)."""
    return choice_scores(model, tokenizer, prompts, choices, **options).argmax(dim=1).tolist()


def choice_scores(model: nn.Module, tokenizer, prompts: Sequence[str], choices: Sequence[str], *,
                  max_length: int = 256, batch_size: int = 16, bf16: bool = False,
                  pad_to_multiple_of: int | None = 16, progress: bool = False) -> torch.Tensor:
    """:func:`score_choices` for many prompts, batched: (len(prompts), len(choices)).

    When every choice is a single token, one forward pass per prompt scores them all
    (the log-probabilities at the prompt's last position); otherwise each (prompt, choice)
    pair is a sequence of its own. Both give the scores of :func:`score_choices`.
    """
    from ftlib.progress import progress_bar

    first = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    single = all(len(ids) == 1 for ids in first)
    if single:  # the prompt alone, its last position predicting the choice's token
        pairs = [_choice_example(tokenizer, p, choices[0], max_length) for p in prompts]
        for ex in pairs:
            ex["labels"] = [IGNORE_INDEX] * (len(ex["labels"]) - 2) + [ex["input_ids"][-2], IGNORE_INDEX]
        choice_ids = torch.tensor([ids[0] for ids in first])
    else:
        pairs = [_choice_example(tokenizer, p, c, max_length) for p in prompts for c in choices]
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i]["input_ids"]))  # less padding
    scores = torch.empty(len(prompts), len(choices)) if single else torch.empty(len(pairs))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    device = _device_of(model)
    with _eval_mode(model), _autocast(bf16, device):
        for idx in progress_bar(batches, progress, desc="score"):
            batch = collate_sft([pairs[i] for i in idx], tokenizer.pad_token_id)
            batch = _fit_batch(pad_to_multiple(batch, pad_to_multiple_of, tokenizer.pad_token_id))
            batch = devices.to_device(batch, device)
            logits = labelled_logits(model, batch["input_ids"], batch["attention_mask"], batch["target_mask"])
            log_probs = torch.log_softmax(logits.float(), -1)  # (N, V), on the model's device
            if single:
                scores[idx] = log_probs[:, choice_ids.to(device)].cpu()  # one labelled position per prompt
                continue
            picked = log_probs.gather(1, batch["labels"][:, None]).squeeze(1).cpu()  # (N,)
            rows = batch["target_mask"].nonzero()[:, 0].cpu()  # the sequence of each labelled token
            scores[idx] = torch.zeros(len(idx)).index_add_(0, rows, picked)
    return scores.view(len(prompts), len(choices))


def generate(model: nn.Module, tokenizer, prompts: Sequence[str] | Sequence[Sequence[dict]],
             max_new_tokens: int = 16, *, batch_size: int = 8) -> list[str]:
    """Greedy replies to several prompts, left-padded in batches; each stops at end of turn.

    A prompt is the user's text or a conversation so far (see :func:`prompt_ids`). Batches
    hold prompts of similar lengths (less padding to compute); replies come back in the
    prompts' order.
    """
    stop = end_of_turn_id(tokenizer)
    device = _device_of(model)
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    replies: list[str] = [""] * len(ids)
    with _eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = devices.to_device(collate_for_generation([ids[i] for i in rows], tokenizer.pad_token_id), device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tokenizer.pad_token_id)
            new = out[:, batch["input_ids"].shape[1]:]  # (B, new tokens): the replies only
            for i, row in zip(rows, new):
                replies[i] = tokenizer.decode(_until(row.tolist(), stop), skip_special_tokens=True)
    return replies


def _until(ids: list[int], stop: int) -> list[int]:
    return ids[:ids.index(stop)] if stop in ids else ids


def greedy_generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 32) -> str:
    """The model's greedy reply to ``prompt`` (the reply only, up to the end of turn)."""
    return generate(model, tokenizer, [prompt], max_new_tokens, batch_size=1)[0]
