"""Talking to a chat model: load it for inference, stream its replies, keep a conversation.

What ``ftlib generate`` and ``ftlib chat`` run, and what a notebook calls after notebook 09's
fine-tune. It serves the end of the generative steps: using the model you trained.

* **Loading** (:func:`load_for_generation`): a run folder of ``ftlib finetune --model
  smollm2-135m`` (its ``merged/`` model, or the base model named in ``metrics.json`` with
  ``adapter/`` on top), a registered model name, or any folder ``save_pretrained`` wrote.
  Local files only. An adapter is merged into the weights of the private copy just loaded:
  peft's adapted layers cost a Python call and two small products each, at every step.
* **Decoding** (:func:`generate_tokens`): the KV-cache loop of
  `ftlib.generative.decoding.generate_with_cache`, with sampling
  (`~ftlib.generative.decoding.sample_next_token`, a seeded ``torch.Generator``) and a cache
  that can be kept between calls. Greedy gives the tokens of ``model.generate(do_sample=False)``.
* **Text** (:func:`detokenize`): tokens become text as soon as they make whole characters.
  A byte-level tokenizer splits "é" (two UTF-8 bytes) or an emoji (four) across tokens, and
  one token alone decodes to U+FFFD; each step decodes only a short window of recent tokens.
* **Conversations** (:class:`Chat`): the whole history in the chat template; when it no
  longer fits the context, the oldest exchanges go, the system turn stays
  (:func:`fit_conversation`). The cache of what the model has already read is reused from one
  turn to the next, so a turn costs its new tokens, not the whole conversation again.

It does not batch several conversations (``sft.generate`` batches greedy replies), beam
search, or serve requests.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from ftlib import arguments, devices
from ftlib.generative import sft
from ftlib.generative.decoding import sample_next_token

__all__ = ["load_for_generation", "for_inference", "context_length", "prompt_tokens", "generate_tokens",
           "detokenize", "stream", "reply", "fit_conversation", "Chat"]


def _generative_names() -> str:
    from ftlib.models import MODELS

    return ", ".join(n for n, s in MODELS.items() if s.task == "text generation")


def _from_folder(folder: Path, *, tokenizer=None):
    """A causal LM and its tokenizer from a ``save_pretrained`` folder, reading local files only."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ftlib.gguf_weights import quiet_transformers

    manifest = folder / "ftlib.json"  # a classifier saved by ftlib.saving
    if manifest.is_file():
        task = json.loads(manifest.read_text()).get("task", "?")
        raise ValueError(f"{folder} holds a {task} classifier saved by `ftlib finetune`: it predicts labels, it "
                         "does not write text (use `ftlib predict`).")
    with quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ValueError(f"{folder}: config.json cannot be read ({str(err).splitlines()[0]}).") from None
        architectures = config.architectures or []
        if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            raise ValueError(f"{folder} holds a {architectures[0]}, not a causal language model: it cannot "
                             "generate text.")
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as err:
            raise ValueError(f"{folder}: not a causal language model transformers can load "
                             f"({str(err).splitlines()[0]}).") from None
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError, TypeError) as err:
                raise ValueError(f"{folder} has no tokenizer files transformers can read "
                                 f"({str(err).splitlines()[0]}); save the tokenizer beside the model.") from None
    return model, tokenizer


def _registered(name: str, *, allow_download: bool, seed: int | None, dtype: torch.dtype = torch.float32):
    """``load_causal_lm(name)``; random weights are drawn from ``seed``, the caller's random state left as it was."""
    from ftlib.models import load_causal_lm

    if seed is None:
        return load_causal_lm(name, allow_download=allow_download, dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_causal_lm(name, allow_download=allow_download, dtype=dtype)


def _from_run(folder: Path, *, allow_download: bool):
    """A run folder of ``ftlib finetune``: ``merged/``, else the base model with ``adapter/`` merged in."""
    from ftlib.models import get_model_spec, load_tokenizer

    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except ValueError as err:
        raise ValueError(f"{folder / 'metrics.json'} is not the JSON `ftlib finetune` writes ({err}).") from None
    task, base = metrics.get("task"), metrics.get("model")
    if task != "text generation":
        raise ValueError(f"{folder} is a run of a {task} classifier ({base}): it predicts labels, it does not "
                         f"write text (use `ftlib predict {folder}`).")
    if (folder / "merged" / "config.json").is_file():
        tokenizer = None
        if not any((folder / "merged" / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            tokenizer = load_tokenizer(base, allow_download=allow_download)
        model, tokenizer = _from_folder(folder / "merged", tokenizer=tokenizer)
        return model, tokenizer, f"{base} fine-tuned ({folder / 'merged'})"
    if not (folder / "adapter" / "adapter_config.json").is_file():
        raise ValueError(f"{folder} holds no weights to generate with (no adapter/ or merged/ folder): a run of "
                         "--technique full keeps no model.")
    # A random base (tiny-llama) is the one the run built right after seeding: the adapter means
    # something on that base only.
    seed = None if get_model_spec(base, allow_download=allow_download, task="text generation").pretrained \
        else int(metrics.get("seed", 0))
    model, tokenizer = _registered(base, allow_download=allow_download, seed=seed)
    model = sft.merge_lora(sft.load_adapter(model, folder / "adapter"))
    return model, tokenizer, f"{base} with the LoRA adapter of {folder} merged in"


def load_for_generation(source, *, allow_download: bool = False, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None):
    """``(model, tokenizer, description)``: a chat model ready for :func:`stream`, from what ``source`` names.

    Parameters
    ----------
    source : str or path
        A run folder of ``ftlib finetune`` with a generative model (``merged/`` or
        ``adapter/``; the adapter's folder itself also works), a folder ``save_pretrained``
        wrote (config, weights and tokenizer), or a registered model name
        (``smollm2-135m``, ``tiny-llama``: random weights, built from seed 0).
    allow_download : bool
        Also accept a Hugging Face model id (needs internet). Folders are read offline always.
    dtype : torch.dtype, optional
        The weights' type. Default: bf16 where ``device`` runs it natively
        (`ftlib.generative.sft.bf16_is_native`), else fp32.
    device : torch.device or str, optional
        Default: a GPU if there is one, else the CPU.

    Raises
    ------
    ValueError
        In one line, for a source that is none of these, or that cannot write text (a
        classifier), or whose tokenizer has no chat template.
    """
    from ftlib.models import MODELS, get_model_spec

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a folder or a model name (str); got {type(source).__name__}.")
    device = torch.device(device) if device is not None else devices.default_device()
    dtype = dtype or (torch.bfloat16 if sft.bf16_is_native(device) else torch.float32)
    path = Path(source)
    if path.is_dir() and (path / "adapter_config.json").is_file() and (path.parent / "metrics.json").is_file():
        path = path.parent  # the adapter/ of a run folder: the run says which base it goes on
    if path.is_dir() and (path / "metrics.json").is_file():
        model, tokenizer, what = _from_run(path, allow_download=allow_download)
    elif path.is_dir() and (path / "config.json").is_file():
        model, tokenizer = _from_folder(path)
        what = f"{model.config.model_type} model from {path}"
    elif path.exists():
        raise ValueError(f"{path} is neither a run folder of `ftlib finetune` (metrics.json) nor a model folder "
                         "written by save_pretrained (config.json).")
    else:
        name = str(source)
        if name in MODELS and MODELS[name].task != "text generation":
            raise ValueError(f"{name!r} is a {MODELS[name].task} model, not a generative one; generative models: "
                             f"{_generative_names()}.")
        if name not in MODELS and not ("/" in name and allow_download):
            raise ValueError(f"{name!r}: no such folder, and not a registered generative model "
                             f"({_generative_names()}). A Hugging Face model id needs allow_download=True "
                             "(--allow-download).")
        spec = get_model_spec(name, allow_download=allow_download, task="text generation")
        # Random weights (tiny-llama) are the same ones in every process: drawn from seed 0.
        model, tokenizer = _registered(name, allow_download=allow_download, seed=None if spec.pretrained else 0,
                                       dtype=dtype)
        what = f"{name} ({spec.description})"
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"The tokenizer of {source} has no chat template: this is not a chat model.")
    model = model.to(device=device, dtype=dtype).eval()
    return model, tokenizer, f"{what}; {str(dtype).removeprefix('torch.')} on {device}"


def for_inference(model: nn.Module) -> nn.Module:
    """``model`` in eval mode, ready for :func:`stream`: a peft model is merged, on a copy.

    Merging folds each adapter into its weight (``W + (alpha / r) B A``): the same outputs,
    without the adapted layers' extra work at every step. The peft model passed in is left
    as it was (still trainable, its adapter still separate).
    """
    import copy

    if hasattr(model, "merge_and_unload"):
        model = sft.merge_lora(copy.deepcopy(model))
    return model.eval()


def context_length(model: nn.Module) -> int:
    """How many tokens the model reads at most: prompt and reply together."""
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def prompt_tokens(tokenizer, messages: Sequence[dict]) -> list[int]:
    """The conversation rendered with the chat template, up to the assistant's header, as token ids."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template has them already


def _new_cache(model: nn.Module):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _check_sampling(temperature: float, top_p: float) -> None:
    """The checks of ``sample_next_token``, made before any work rather than at the first token."""
    arguments.number(temperature, "temperature", minimum=0, inclusive=True, meaning="0 for greedy")
    arguments.number(top_p, "top_p", minimum=0, meaning="the share of probability kept, 1 for all")
    if top_p > 1:
        raise arguments.ArgumentError("top_p", "must be at most 1 (1 keeps every token)", top_p)


def generate_tokens(model: nn.Module, input_ids: Sequence[int] | torch.Tensor, *, max_new_tokens: int,
                    eos_token_id: int | None, temperature: float = 0.0, top_p: float = 1.0,
                    generator: torch.Generator | None = None, cache=None) -> Iterator[int]:
    """The new tokens, one at a time as each is chosen; ``eos_token_id`` is the last if reached.

    One forward pass over ``input_ids`` (only the vocabulary projection of the last position),
    then one position per step, the KV cache holding the rest. ``cache`` (a transformers
    ``DynamicCache``) may already hold the tokens before ``input_ids``; it is filled in place
    with every token the model reads (the prompt and each new token but the last).
    Temperature 0 gives ``model.generate(do_sample=False)``'s tokens. The arguments are
    checked at the call; the model runs as the tokens are asked for.
    """
    arguments.integer(max_new_tokens, "max_new_tokens", minimum=0)
    _check_sampling(temperature, top_p)
    ids = torch.as_tensor(input_ids, dtype=torch.long, device=next(model.parameters()).device).reshape(1, -1)
    if ids.shape[1] == 0:
        raise ValueError("input_ids is empty: the model needs at least one token to read.")
    return _decode(model, ids, max_new_tokens, eos_token_id, temperature, top_p, generator,
                   _new_cache(model) if cache is None else cache)


@torch.inference_mode()
def _decode(model, ids, max_new_tokens, eos_token_id, temperature, top_p, generator, cache) -> Iterator[int]:
    for made in range(1, max_new_tokens + 1):
        logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits  # (1, T or 1, V)
        token = sample_next_token(logits[:, -1], temperature, top_p, generator)  # (1,)
        token_id = int(token)
        yield token_id
        if token_id == eos_token_id or made == max_new_tokens:
            return
        ids = token.view(1, 1)  # (1, 1): the cache holds the rest


def detokenize(tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Text pieces of ``token_ids`` as soon as they form whole characters; joined, the text of them all.

    A piece is emitted when the decoded text grew and does not end in U+FFFD (the
    replacement character of an incomplete UTF-8 sequence). Each decode covers the tokens
    since the last piece plus the ones before it (for tokenizers whose decoding of a token
    depends on its left neighbour, like SentencePiece's leading spaces): a few tokens, not
    the whole reply. Special tokens are skipped, as in ``sft.generate``.
    """
    ids: list[int] = []
    prefix, read, shown = 0, 0, ""  # ids[prefix:read] were shown already; they decode to `shown`
    for token_id in token_ids:
        ids.append(token_id)
        text = tokenizer.decode(ids[prefix:], skip_special_tokens=True)
        if len(text) > len(shown) and not text.endswith("\ufffd"):
            yield text[len(shown):]
            prefix, read = read, len(ids)
            shown = tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
    rest = tokenizer.decode(ids[prefix:], skip_special_tokens=True)  # truly invalid bytes show as U+FFFD
    if len(rest) > len(shown):
        yield rest[len(shown):]


def _messages(messages) -> list[dict]:
    return sft.chat_messages(messages) if isinstance(messages, str) else list(messages)


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    return torch.Generator(device=next(model.parameters()).device).manual_seed(int(seed))


def _until_end(tokens: Iterable[int], stop: int) -> Iterator[int]:
    for token in tokens:
        if token == stop:
            return
        yield token


def stream(model: nn.Module, tokenizer, messages, *, max_new_tokens: int = 128, temperature: float = 0.0,
           top_p: float = 1.0, seed: int = 0) -> Iterator[str]:
    """The reply to ``messages`` (a conversation, or one user prompt as a str), piece by piece.

    Stops at the end-of-turn token (not shown) or after ``max_new_tokens``. Sampling
    (``temperature`` > 0) draws from a ``torch.Generator`` seeded with ``seed``: the same
    seed gives the same text. Give it a merged model (:func:`for_inference`) for speed.

    Examples
    --------
    >>> model, tokenizer, _ = load_for_generation("tiny-llama")
    >>> text = "".join(stream(model, tokenizer, "Hi!", max_new_tokens=8))
    """
    ids = prompt_tokens(tokenizer, _messages(messages))
    tokens = generate_tokens(model, ids, max_new_tokens=max_new_tokens, eos_token_id=sft.end_of_turn_id(tokenizer),
                             temperature=temperature, top_p=top_p, generator=_generator(model, seed))
    return detokenize(tokenizer, _until_end(tokens, sft.end_of_turn_id(tokenizer)))


def reply(model: nn.Module, tokenizer, messages, **options) -> str:
    """The whole reply of :func:`stream` (same options) as one string."""
    return "".join(stream(model, tokenizer, messages, **options))


def fit_conversation(tokenizer, messages: Sequence[dict], max_length: int) -> list[dict]:
    """``messages`` without their oldest exchanges, until the rendered prompt has at most ``max_length`` tokens.

    An exchange is a user turn and the assistant's reply to it; the system turn (first, if
    any) and the last user turn always stay. Returns a new list (``messages`` itself if it fits).

    Raises
    ------
    ValueError
        When the system turn and the last user turn alone take more than ``max_length``.
    """
    arguments.integer(max_length, "max_length", minimum=1)
    kept = list(messages)
    first = 1 if kept and kept[0]["role"] == "system" else 0
    while True:
        length = len(prompt_tokens(tokenizer, kept))
        if length <= max_length:
            return kept
        if len(kept) - first <= 1:
            raise ValueError(f"The message takes {length} tokens with the system prompt and the template, more than "
                             f"the {max_length} the context leaves for it; write a shorter one.")
        del kept[first:first + 2]  # the oldest user turn and its reply


class Chat:
    """A conversation with a chat model: its messages, and the KV cache of what the model has read.

    :meth:`send` adds a user turn and streams the reply, which joins the history. Each turn
    renders the whole conversation with the chat template; the cache keeps the tokens it
    shares with the last turn's, so only the new ones are read. When the conversation and
    ``max_new_tokens`` no longer fit the model's context, the oldest exchanges are dropped
    (``dropped_`` counts them). Sampling uses one generator, seeded at the start and at
    :meth:`reset`: the same seed and the same inputs give the same conversation.
    """

    def __init__(self, model: nn.Module, tokenizer, *, system: str | None = sft.SYSTEM_PROMPT,
                 max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> None:
        arguments.integer(max_new_tokens, "max_new_tokens")
        _check_sampling(temperature, top_p)
        if max_new_tokens >= context_length(model):
            raise arguments.ArgumentError("max_new_tokens", f"must leave room in the model's context of "
                                          f"{context_length(model)} tokens for the conversation", max_new_tokens)
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self.eos = sft.end_of_turn_id(tokenizer)
        self.reset()

    def reset(self) -> None:
        """Start a new conversation: the system turn only, an empty cache, the generator seeded again."""
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system is not None else []
        self.dropped_ = 0
        self._cache, self._read = None, []  # the cache, and the token ids it holds
        self._generator = _generator(self.model, self.seed)

    @property
    def context_ids(self) -> list[int]:
        """The token ids the model has read so far (what the cache holds)."""
        return list(self._read)

    def send(self, text: str) -> Iterator[str]:
        """Add the user's ``text`` and return the reply's pieces as they come.

        The history is fitted to the context at once (``dropped_`` is up to date and a
        message too long for the context raises ``ValueError`` before anything is
        generated); the reply joins the history when the iterator ends or is closed.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}.")
        wanted = self.messages + [{"role": "user", "content": text}]
        fitted = fit_conversation(self.tokenizer, wanted, context_length(self.model) - self.max_new_tokens)
        self.dropped_ += (len(wanted) - len(fitted)) // 2
        ids = prompt_tokens(self.tokenizer, fitted)
        # The longest start shared with what the cache holds, less at least one token to read.
        keep = 0
        for a, b in zip(self._read, ids[:-1]):
            if a != b:
                break
            keep += 1
        if keep == 0 or self._cache is None:
            self._cache, keep = _new_cache(self.model), 0
        else:
            self._cache.crop(keep - len(self._read))  # a negative count: the tokens removed from its end
        # The reply's turn is there from now on, filled as it comes: the turns alternate even if
        # the caller never reads the reply.
        self.messages = fitted + [{"role": "assistant", "content": ""}]
        tokens = generate_tokens(self.model, ids[keep:], max_new_tokens=self.max_new_tokens, eos_token_id=self.eos,
                                 temperature=self.temperature, top_p=self.top_p, generator=self._generator,
                                 cache=self._cache)
        return self._reply(ids, tokens)

    def _reply(self, ids: list[int], tokens: Iterator[int]) -> Iterator[str]:
        made: list[int] = []

        def record(tokens):
            for token in tokens:
                made.append(token)
                yield token

        pieces: list[str] = []
        try:
            for piece in detokenize(self.tokenizer, _until_end(record(tokens), self.eos)):
                pieces.append(piece)
                yield piece
        except BaseException as err:
            if not isinstance(err, GeneratorExit):  # stopped mid-step (Ctrl-C): the cache may be half-updated
                self._cache, self._read = None, []
            raise
        finally:
            self.messages[-1]["content"] = "".join(pieces)
            if self._cache is not None:
                self._read = (ids + made)[:self._cache.get_seq_length()]
