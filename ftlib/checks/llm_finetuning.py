"""Checks of 09_llm_finetuning: SFT examples, padding, the causal-LM loss, scoring, generation.

Every check runs on the tiny random Llama and byte-level ChatML tokenizer of
``ftlib.models`` (``load_causal_lm("tiny-llama")``), so it takes a second or two and needs
no download, and compares the learner's function with ``ftlib.generative.sft`` on the same inputs.
The tokenizer pads with its end-of-turn token, as SmolLM2 does: an answer that masks
"padding" by token id masks the end of turn too, and is caught.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from ftlib.generative import sft as reference
from ftlib.checks._common import error_text, CheckFailure, as_float, as_int_list, call, expect, first_difference, quiet
from ftlib.checks.remote import observe

__all__ = ["check_build_sft_example", "check_collate_sft", "check_causal_lm_loss", "check_score_choices",
           "check_greedy_generate", "tiny_chat_model", "probe_build_sft_example", "probe_collate_sft",
           "probe_causal_lm_loss", "probe_score_choices", "probe_greedy_generate"]

# Imported once by `ftlib check` before its grade cells fork (see grading._runner).
PRELOAD = ("transformers.models.llama.modeling_llama", "transformers.tokenization_utils_tokenizers",
           "transformers.generation.utils")
# Built once before the grade cells fork, so the two checks that use it share it.
PREPARE = ("_taught_state",)

_IGNORE = -100


def _tokenizer():
    from ftlib.models import tiny_chat_tokenizer

    return tiny_chat_tokenizer()


def _example(result, label: str) -> dict:
    expect(isinstance(result, dict), f"build_sft_example should return a dict ({label}).", "dict",
           type(result).__name__)
    keys = {"input_ids", "attention_mask", "labels"}
    expect(keys <= set(result), f"build_sft_example's dict lacks entries ({label}).", sorted(keys),
           sorted(map(str, result)))
    out = {k: as_int_list(result[k], f"{k} ({label})") for k in keys}
    expect(len(out["input_ids"]) == len(out["attention_mask"]) == len(out["labels"]),
           f"input_ids, attention_mask and labels should have the same length ({label}).",
           "equal lengths", [len(out[k]) for k in ("input_ids", "attention_mask", "labels")])
    return out


# prompt, completion, max_length: short, truncated, and a completion that is the pad/eot neighbour
_CASES = [("Is this review positive or negative?\n\nReview: a fine film.", "positive", 256),
          ("Which topic? " + "a very long article " * 8, "sport", 60),
          ("Say hi", "hi!", 128)]


def _sft_cases(thorough: bool) -> list[tuple[str, str, int]]:
    return _CASES + ([("é" * 40, "non", 30)] if thorough else [])


def _label(completion: str, max_length: int) -> str:
    return f"completion {completion!r}, max_length {max_length}"


# The answer ("positive" and the end of turn) alone takes more than 3 tokens: no room for the prompt.
_NO_ROOM = ("Is this review positive or negative?\n\nReview: a fine film.", "positive", 3)


def probe_build_sft_example(build_sft_example, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: their example for each case, as lists of ints, and what
    a max_length too small for any prompt token did."""
    tok = _tokenizer()
    with quiet():
        examples = [_example(call(build_sft_example, tok, prompt, completion, max_length, name="build_sft_example"),
                             _label(completion, max_length))
                    for prompt, completion, max_length in _sft_cases(thorough)]
        try:
            result = build_sft_example(tok, *_NO_ROOM)
        except ValueError as err:
            no_room = {"kind": "ValueError", "message": error_text(err)}
        except Exception as err:
            no_room = {"kind": "other", "found": f"{type(err).__name__}: {error_text(err)}"}
        else:
            ids = result.get("input_ids") if isinstance(result, dict) else None
            no_room = {"kind": "returned", "length": len(ids) if isinstance(ids, list) else None}
    return {"examples": examples, "no_room": no_room}


def check_build_sft_example(build_sft_example, *, thorough: bool = False) -> None:
    """Chat template with the short system turn, labels -100 on the prompt, end of turn labelled, left cut."""
    observed = observe(probe_build_sft_example, build_sft_example, thorough=thorough)
    expect(isinstance(observed, dict) and {"examples", "no_room"} <= set(observed),
           "The check could not read what build_sft_example returned.", "examples", type(observed).__name__)
    tok = _tokenizer()
    eot = reference.end_of_turn_id(tok)
    with quiet():
        for (prompt, completion, max_length), got in zip(_sft_cases(thorough), observed["examples"], strict=True):
            label = _label(completion, max_length)
            got = _example(got, label)
            want = reference.build_sft_example(tok, prompt, completion, max_length)
            n_prompt = want["labels"].count(_IGNORE)
            answer = want["input_ids"][n_prompt:]
            if got["input_ids"] != want["input_ids"]:
                whole = tok.apply_chat_template(reference.chat_messages(prompt, completion), tokenize=False)
                if len(got["input_ids"]) > max_length:
                    hint = "Cut the prompt's tokens from the start so that prompt + answer fit in max_length."
                elif got["input_ids"][-len(answer):] != answer:
                    hint = ("The sequence should end with the completion's tokens and the end-of-turn token "
                            "(end_of_turn_id(tokenizer)); truncation must never cut them.")
                elif tok.decode(got["input_ids"]).startswith("<|im_start|>system\nYou are a helpful AI"):
                    hint = ("That is the template's default system prompt: pass the messages of "
                            "sft.chat_messages(prompt), which start with the short system turn.")
                elif got["input_ids"][:len(want["input_ids"])] == tok(whole, add_special_tokens=False)["input_ids"][
                        :len(want["input_ids"])] and len(got["input_ids"]) > len(want["input_ids"]):
                    hint = "Stop at the end-of-turn token: leave out the newline the template writes after it."
                else:
                    hint = ("Render the prompt with tokenizer.apply_chat_template(chat_messages(prompt), "
                            "tokenize=False, add_generation_prompt=True), tokenize it with add_special_tokens=False,"
                            " then append the completion's tokens and the end-of-turn token.")
                raise CheckFailure(f"input_ids differ from the expected chat-rendered sequence ({label}).",
                                   tok.decode(want["input_ids"]), tok.decode(got["input_ids"]), hint)
            expect(got["attention_mask"] == want["attention_mask"], f"attention_mask should be all 1 ({label}).",
                   "all 1", got["attention_mask"])
            if got["labels"] != want["labels"]:
                labelled = [t for t in got["labels"] if t != _IGNORE]
                if got["labels"][:n_prompt] != [_IGNORE] * n_prompt:
                    hint = "Every prompt token gets the label -100: the loss is on the answer only."
                elif eot not in labelled:
                    hint = "Keep the end-of-turn token in the labels, or the model never learns to stop."
                else:
                    hint = "The labels of the completion and end-of-turn tokens are the tokens themselves."
                raise CheckFailure(f"labels are wrong ({label}).", want["labels"], got["labels"], hint)
        _, completion, max_length = _NO_ROOM
        no_room = observed["no_room"]
        expect(isinstance(no_room, dict) and no_room.get("kind") in ("ValueError", "other", "returned"),
               "The check could not read what build_sft_example did with a max_length too small.", "a report",
               no_room)
        if no_room["kind"] != "ValueError":
            found = (no_room.get("found") if no_room["kind"] == "other"
                     else f"an example of {no_room.get('length')} tokens, no error")
            raise CheckFailure(f"With {_label(completion, max_length)}, the answer and its end of turn alone do not "
                               f"fit: build_sft_example should raise ValueError, as its docstring says.",
                               "ValueError", found,
                               "Check the room left for the prompt (max_length minus the answer's tokens) before "
                               "cutting: with room 0, prompt[-0:] is the whole prompt, not none of it.")


def _collate_inputs(tok):
    examples = [reference.build_sft_example(tok, p, c, 256) for p, c in [("Hi", "yes"), ("A longer prompt", "no"),
                                                                         ("Mid one", "ok")]]
    return examples


_BATCH_KEYS = ("input_ids", "attention_mask", "labels")


def _collate_orders(tok, thorough: bool) -> list[list[dict]]:
    examples = _collate_inputs(tok)
    return [examples, examples[::-1]] + ([examples[:1]] if thorough else [])


def _describe_tensor(value) -> str:
    return f"{type(value).__name__} {getattr(value, 'dtype', '')} {tuple(getattr(value, 'shape', ()))}"


def _tensor(value):
    """A tensor as data (a copy, without its graph), or None for anything else."""
    return value.detach().clone() if type(value) in (torch.Tensor, nn.Parameter) else None


def probe_collate_sft(collate_sft, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their batch for each order of the examples, and whether those survived."""
    tok = _tokenizer()
    with quiet():
        observed = []
        for batch_examples in _collate_orders(tok, thorough):
            snapshot = [{k: list(v) for k, v in e.items()} for e in batch_examples]
            got = call(collate_sft, batch_examples, tok.pad_token_id, name="collate_sft")
            is_dict = isinstance(got, dict)
            observed.append({
                "modified": [{k: list(v) for k, v in e.items()} for e in batch_examples] != snapshot,
                "keys": sorted(map(str, got)) if is_dict else None, "type": type(got).__name__,
                "tensors": {k: _tensor(got[k]) for k in _BATCH_KEYS if is_dict and k in got},
                "found": {k: _describe_tensor(got[k]) for k in _BATCH_KEYS if is_dict and k in got}})
        return observed


def check_collate_sft(collate_sft, *, thorough: bool = False) -> None:
    """Right padding; attention 0 and label -100 on padding; the end of turn (= pad id) kept in the labels."""
    observed = observe(probe_collate_sft, collate_sft, thorough=thorough)
    tok = _tokenizer()
    with quiet():
        for batch_examples, seen in zip(_collate_orders(tok, thorough), observed, strict=True):
            expect(seen["modified"] is False,
                   "collate_sft should not change the examples it is given.", "unchanged", "modified")
            want = reference.collate_sft(batch_examples, tok.pad_token_id)
            expect(seen["keys"] is not None and set(want) <= set(seen["tensors"]),
                   "collate_sft should return a dict of tensors.",
                   sorted(want), seen["keys"] if seen["keys"] is not None else seen["type"])
            got = {}
            for key in _BATCH_KEYS:
                value = seen["tensors"][key]
                expect(type(value) is torch.Tensor and value.dtype == torch.long and value.shape == want[key].shape,
                       f"{key} should be a (B, T) tensor of int64.", f"shape {tuple(want[key].shape)}, int64",
                       seen["found"][key])
                got[key] = value
            if not torch.equal(got["input_ids"], want["input_ids"]):
                left = torch.equal(got["input_ids"][0, -len(batch_examples[0]["input_ids"]):],
                                   torch.tensor(batch_examples[0]["input_ids"]))
                where, expected, found = _differ(want["input_ids"], got["input_ids"])
                raise CheckFailure(f"input_ids are not right-padded with pad_token_id (first differ at {where}).",
                                   expected, found,
                                   "For training, pad on the right: real tokens first." if left else
                                   "Append pad_token_id after each sequence up to the longest one.")
            if not torch.equal(got["attention_mask"], want["attention_mask"]):
                where, expected, found = _differ(want["attention_mask"], got["attention_mask"])
                raise CheckFailure("attention_mask should be 1 on real tokens and 0 on padding "
                                   f"(first differ at {where}).", expected, found)
            if not torch.equal(got["labels"], want["labels"]):
                masked_eot = bool(((want["labels"] == tok.pad_token_id) & (got["labels"] == _IGNORE)).any())
                where, expected, found = _differ(want["labels"], got["labels"])
                raise CheckFailure(
                    f"labels are wrong (first differ at {where}).", expected, found,
                    "The pad token is also the end-of-turn token here (as in SmolLM2): mask padding by position "
                    "(where you added it), not by token id, or the model never learns to stop." if masked_eot else
                    "Pad labels with -100 so that padding is not in the loss.")


def _differ(want: torch.Tensor, got: torch.Tensor) -> tuple[str, str, str]:
    """Where two (B, T) tensors first differ, with a window of each around it."""
    return first_difference(want.numpy(), got.numpy()) or ("no position", str(want.tolist()), str(got.tolist()))


def _loss_cases(thorough: bool) -> list[tuple[int, int, int, int]]:
    # seed, batch, length, vocabulary
    return [(0, 2, 6, 11), (1, 3, 5, 7)] + ([(2, 1, 9, 13)] if thorough else [])


def _loss_inputs(seed: int, batch: int, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[:, : length // 2] = _IGNORE  # a prompt
    labels[0, -1] = _IGNORE  # padding
    return logits, labels


def probe_causal_lm_loss(causal_lm_loss, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their loss per case, whether the inputs survived, whether it has a gradient."""
    with quiet():
        observed = []
        for case in _loss_cases(thorough):
            logits, labels = _loss_inputs(*case)
            logits_copy, labels_copy = logits.clone(), labels.clone()
            got = call(causal_lm_loss, logits, labels, name="causal_lm_loss")
            scalar = isinstance(got, torch.Tensor) and got.ndim == 0
            seen = {"scalar": scalar, "found": f"{type(got).__name__} {tuple(getattr(got, 'shape', ()))}",
                    "modified": not (torch.equal(logits, logits_copy) and torch.equal(labels, labels_copy)),
                    "value": as_float(got, "the loss") if scalar else None}
            logits, labels = _loss_inputs(*case)
            logits.requires_grad_(True)
            out = call(causal_lm_loss, logits, labels, name="causal_lm_loss")
            seen["requires_grad"] = isinstance(out, torch.Tensor) and out.requires_grad is True
            observed.append(seen)
        return observed


def check_causal_lm_loss(causal_lm_loss, *, thorough: bool = False) -> None:
    """Shift once (position t predicts token t+1), skip -100, mean over the labelled tokens."""
    observed = observe(probe_causal_lm_loss, causal_lm_loss, thorough=thorough)
    with quiet():
        for case, seen in zip(_loss_cases(thorough), observed, strict=True):
            logits, labels = _loss_inputs(*case)
            expect(seen["scalar"] is True, "causal_lm_loss should return a 0-d tensor.",
                   "torch.Tensor of shape ()", seen["found"])
            expect(seen["modified"] is False,
                   "causal_lm_loss should not change its inputs.", "unchanged", "modified")
            want = reference.causal_lm_loss(logits, labels)
            value = as_float(seen["value"], "the loss")
            if abs(value - want.item()) > 1e-4:
                flat = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=_IGNORE)
                twice = nn.functional.cross_entropy(logits[:, :-2].flatten(0, 1), labels[:, 2:].flatten(),
                                                    ignore_index=_IGNORE)
                hint = ("Without a shift each position 'predicts' its own token: compare logits[:, :-1] with "
                        "labels[:, 1:]." if abs(value - flat.item()) < 1e-4 else
                        "Shift once only: labels come aligned with the inputs, and one shift (logits[:, :-1] vs "
                        "labels[:, 1:]) makes position t predict token t+1." if abs(value - twice.item()) < 1e-4 else
                        "Mean cross-entropy over the labelled positions only (ignore_index=-100).")
                raise CheckFailure("The loss differs from the mean cross-entropy of the labelled next tokens.",
                                   round(want.item(), 5), round(value, 5), hint)
            expect(seen["requires_grad"] is True, "The loss should carry gradients to logits.",
                   "requires_grad=True", "no gradient", "Compute it with torch operations, no .item() or numpy.")


@functools.lru_cache(maxsize=1)
def _taught_state() -> tuple:
    """A tiny Llama fine-tuned (fully, 40 short epochs, ~1 s) to reply "ok" to "Say ..." prompts."""
    from ftlib.models import load_causal_lm
    from ftlib.optim import adamw
    from ftlib.train import fit

    with quiet():  # one thread, no output: also when `ftlib check` builds it before any check
        torch.manual_seed(0)
        model, tok = load_causal_lm("tiny-llama")
        examples = [reference.build_sft_example(tok, f"Say it {i}", "ok", 256) for i in range(16)]
        loader = reference.make_sft_loader(examples, tok.pad_token_id, batch_size=8, shuffle=True)
        fit(reference.SFTModel(model), loader, None, epochs=40, optimizer=adamw(model.parameters(), lr=1e-2),
            schedule="constant", progress=False)
    return tuple((k, v.clone()) for k, v in model.state_dict().items())


def tiny_chat_model(taught: bool = True):
    """``(model, tokenizer)``: the tiny Llama the checks use; ``taught`` replies "ok" and stops."""
    from ftlib.models import load_causal_lm

    torch.manual_seed(0)
    model, tok = load_causal_lm("tiny-llama")
    if taught:
        model.load_state_dict(dict(_taught_state()))
    # As in many base-model configs, the default EOS is <|endoftext|>, not the end of turn:
    # generation stops at <|im_end|> only when asked to.
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|endoftext|>")
    return model, tok


class _Spy(nn.Module):
    """Forwards everything to a causal LM, recording (training, grad enabled) at each call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls, self.steps = inner, [], 0  # steps: tokens generated, or forward calls

    def forward(self, *args, **kwargs):
        self.calls.append((self.training, torch.is_grad_enabled()))
        self.steps += 1
        return self.inner(*args, **kwargs)

    def generate(self, *args, **kwargs):
        self.calls.append((self.training, torch.is_grad_enabled()))
        out = self.inner.generate(*args, **kwargs)
        given = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(out, torch.Tensor) and isinstance(given, torch.Tensor):
            self.steps += out.shape[1] - given.shape[1]
        return out

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


def _choice_cases(thorough: bool) -> list[tuple[str, list[str]]]:
    return [("Say it 3", ["ok", "no"]), ("Is this good?", ["yes", "no", "maybe so"])] + (
        [("x", ["a"])] if thorough else [])


def probe_score_choices(score_choices, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their scores on the taught tiny Llama, with each forward's mode."""
    with quiet():
        model, tok = tiny_chat_model(taught=True)
        observed = []
        for prompt, choices in _choice_cases(thorough):
            spy = _Spy(model)
            spy.train()
            got = call(score_choices, spy, tok, prompt, list(choices), name="score_choices")
            scores = _tensor(got)
            observed.append({"scores": scores.float() if scores is not None else None,
                             "found": f"{type(got).__name__} {tuple(getattr(got, 'shape', ()))}",
                             "training": spy.training is True, "calls": [[bool(t), bool(g)] for t, g in spy.calls]})
        return observed


def check_score_choices(score_choices, *, thorough: bool = False) -> None:
    """Summed log-probabilities of each choice's tokens after the chat prompt; eval, no grad, mode restored."""
    observed = observe(probe_score_choices, score_choices, thorough=thorough)
    with quiet():
        model, tok = tiny_chat_model(taught=True)
        for (prompt, choices), seen in zip(_choice_cases(thorough), observed, strict=True):
            got, calls = seen["scores"], seen["calls"]
            expect(type(got) is torch.Tensor and tuple(got.shape) == (len(choices),),
                   "score_choices should return a tensor with one score per choice.", f"shape ({len(choices)},)",
                   seen["found"])
            expect(seen["training"] is True, "score_choices should put the model back in the mode it found it in.",
                   "train", "eval",
                   "Remember model.training at the start and call model.train(was_training) at the end.")
            expect(bool(calls) and all(not training for training, _ in calls),
                   "The model should run in eval mode (dropout off) while scoring.", "eval", "train",
                   "Call model.eval() before the forward pass.")
            expect(all(not grad for _, grad in calls), "Scoring should run without gradients.",
                   "torch.no_grad()", "gradients enabled", "Wrap the forward passes in `with torch.no_grad():`.")
            want = reference.score_choices(model, tok, prompt, choices)
            got = got.detach().float()
            if not torch.allclose(got, want, atol=1e-3):
                with_eot = torch.stack([reference._sequence_log_probs(model, reference.collate_sft(
                    [reference.build_sft_example(tok, prompt, c, 10**9)], tok.pad_token_id))[0] for c in choices])
                hint = ("Score the choice's tokens only, not the end-of-turn token after them."
                        if torch.allclose(got, with_eot, atol=1e-3) else
                        "Sum log_softmax(logits)[t - 1, token t] over the choice's tokens, the prompt rendered with "
                        "the chat template (as in build_sft_example); no mean, no prompt tokens.")
                raise CheckFailure(f"The scores differ from the reference (prompt {prompt!r}, choices {choices}).",
                                   [round(v, 4) for v in want.tolist()], [round(v, 4) for v in got.tolist()], hint)


def _generate_runs(thorough: bool) -> list[tuple[bool, str, int]]:
    # (the taught model?, prompt, max_new_tokens)
    prompts = ["Say it 7", "Say it 12"] + (["Say it now"] if thorough else [])
    return [(True, p, 10) for p in prompts] + [(False, prompts[0], 6)]


def probe_greedy_generate(greedy_generate, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their reply per prompt, the model's mode after, the tokens generated."""
    with quiet():
        models = {True: tiny_chat_model(taught=True), False: tiny_chat_model(taught=False)}
        observed = []
        for taught, prompt, max_new in _generate_runs(thorough):
            model, tok = models[taught]
            spy = _Spy(model)
            spy.train()
            got = call(greedy_generate, spy, tok, prompt, max_new, name="greedy_generate")
            observed.append({"reply": str.__str__(got) if isinstance(got, str) else None, "type": type(got).__name__,
                             "training": spy.training is True, "steps": int(spy.steps)})
        return observed


def check_greedy_generate(greedy_generate, *, thorough: bool = False) -> None:
    """The greedy reply only, decoded without special tokens, stopping at the end of turn."""
    observed = observe(probe_greedy_generate, greedy_generate, thorough=thorough)
    with quiet():
        models = {True: tiny_chat_model(taught=True), False: tiny_chat_model(taught=False)}
        for (taught, prompt, max_new), seen in zip(_generate_runs(thorough), observed, strict=True):
            model, tok = models[taught]
            got = seen["reply"]
            want = reference.greedy_generate(model, tok, prompt, max_new)
            expect(type(got) is str, "greedy_generate should return a str.", "str", seen["type"])
            expect(seen["training"] is True, "greedy_generate should restore the model's mode.", "train", "eval")
            needed = min(max_new, len(tok(want, add_special_tokens=False)["input_ids"]) + 1)  # the reply, end of turn
            steps = seen["steps"]
            expect(type(steps) is int and steps <= needed + 1,
                   f"Generation went on after the end of turn (prompt {prompt!r}).",
                   f"at most {needed} new tokens", f"{steps} steps",
                   "Stop at the end-of-turn token: pass eos_token_id=end_of_turn_id(tokenizer) to generate "
                   "(the model's default EOS may be another token); skip_special_tokens only hides the waste.")
            if got != want:
                if prompt in got or "<|im_start|>" in got:
                    hint = "Return only the new tokens: slice off the prompt before decoding."
                elif "<|im_end|>" in got:
                    hint = "Decode with skip_special_tokens=True."
                elif got.startswith(want) and len(got) > len(want):
                    hint = ("Stop at the end-of-turn token: pass eos_token_id=end_of_turn_id(tokenizer) to generate "
                            "(or cut the reply there).")
                else:
                    hint = "Greedy means do_sample=False: always the most likely next token."
                raise CheckFailure(f"The reply differs (prompt {prompt!r}, max_new_tokens {max_new}).",
                                   repr(want), repr(got), hint)
