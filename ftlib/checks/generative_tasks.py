"""Checks of 10_generative_tasks: conversations as examples, sampling, the KV cache, ROUGE-L.

The chat and decoding checks run on ftlib's byte-level ChatML tokenizer (one token per byte,
so every position of a rendered conversation can be named: a user's turn, the assistant's
header, a reply, its end of turn) and on a tiny random Llama whose greedy continuations
vary from token to token, so that a decode loop that loses its context gives other
tokens. Sampling is checked by its distribution over thousands of seeded draws, not by
matching the reference's draws: any correct nucleus sampler passes. Each check compares
with ``ftlib.generative`` (``chat``, ``decoding``, ``metrics``) on the same inputs.
"""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

from ftlib.checks._common import CheckFailure, as_float, as_int_list, call, error_text, expect, first_difference, quiet
from ftlib.checks.remote import observe
from ftlib.generative import chat as reference_chat
from ftlib.generative import decoding as reference_decoding
from ftlib.generative import metrics as reference_metrics

__all__ = ["check_build_chat_example", "check_sample_next_token", "check_generate_with_cache", "check_rouge_l",
           "probe_build_chat_example", "probe_sample_next_token", "probe_generate_with_cache", "probe_rouge_l",
           "tiny_decoder"]

# Imported once by `ftlib check` before its grade cells fork (see grading._runner).
PRELOAD = ("transformers.models.llama.modeling_llama", "transformers.tokenization_utils_tokenizers")

_IGNORE = -100


def _tokenizer():
    from ftlib.models import tiny_chat_tokenizer

    return tiny_chat_tokenizer()


def _attempt(fn, name: str, *args):
    """``(result, None)`` or ``(None, "Error: message")``: for the inputs whose crash is itself the mistake."""
    try:
        return fn(*args), None
    except NotImplementedError:
        return call(fn, *args, name=name), None  # raises it again, as "not implemented yet"
    except CheckFailure:
        raise
    except Exception as err:  # the learner's error, reported by the check that expected it
        return None, f"{type(err).__name__}: {error_text(err, 300)}"


# --------------------------------------------------------------------------- build_chat_example

def _conversation(*turns: str, system: str | None = None) -> list[dict]:
    """Messages from alternating user / assistant texts, with an optional system turn first."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


_LONG = _conversation("What is the capital of France, and why is it that one?", "Paris, for centuries.",
                      "And of Italy?", "Rome.", "Spain?", "Madrid.", system="Answer briefly.")


def _render_length(tok, messages) -> int:
    return len(reference_chat.build_chat_example(tok, messages, 10**6)["input_ids"])


def _chat_cases(tok, thorough: bool) -> list[tuple[list[dict], int]]:
    """(messages, max_length): one exchange; several; no system turn; too long, so old exchanges go."""
    # max_length between "the last two exchanges" and the whole: the first exchange must go.
    keep_two = _render_length(tok, _LONG[:1] + _LONG[3:]) + 3
    cases = [(_conversation("Is the sky blue?", "Yes.", system="Answer in one word."), 256),
             (_conversation("Hi", "Hello!", "How are you?", "Fine, thanks.", system="Be friendly."), 256),
             (_conversation("2+2?", "4", "And 3+3?", "6"), 512),
             (_LONG, keep_two)]
    if thorough:
        keep_one = _render_length(tok, _LONG[:1] + _LONG[5:]) + 1
        no_system = _LONG[1:]
        cases += [(_LONG, keep_one),
                  (no_system, _render_length(tok, no_system[2:]) + 5),
                  (_conversation("Ça va ?", "Très bien, merci.", "Et toi ?", "Oui.", system="Réponds en français."),
                   256)]
    return cases


# The last exchange alone (with the system turn) is longer than max_length: ValueError.
_NO_ROOM = (_conversation("Hi", "A reply much too long to fit in thirty tokens, even alone.", system="Be brief."), 30)


def _chat_example(result, label: str) -> dict:
    expect(isinstance(result, dict), f"build_chat_example should return a dict ({label}).", "dict",
           type(result).__name__)
    keys = {"input_ids", "attention_mask", "labels"}
    expect(keys <= set(result), f"build_chat_example's dict lacks entries ({label}).", sorted(keys),
           sorted(map(str, result)))
    out = {k: as_int_list(result[k], f"{k} ({label})") for k in sorted(keys)}
    expect(len(out["input_ids"]) == len(out["attention_mask"]) == len(out["labels"]),
           f"input_ids, attention_mask and labels should have the same length ({label}).",
           "equal lengths", [len(out[k]) for k in ("input_ids", "attention_mask", "labels")])
    return out


def _chat_label(messages: list[dict], max_length: int) -> str:
    system = "with" if messages[0]["role"] == "system" else "without"
    replies = sum(m["role"] == "assistant" for m in messages)
    return f"{replies} repl{'y' if replies == 1 else 'ies'}, {system} a system turn, max_length {max_length}"


def probe_build_chat_example(build_chat_example, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: their example for each conversation, whether the messages
    survived, and what a conversation whose last exchange cannot fit did."""
    tok = _tokenizer()
    with quiet():
        examples, modified = [], []
        for messages, max_length in _chat_cases(tok, thorough):
            given = copy.deepcopy(messages)
            got = call(build_chat_example, tok, given, max_length, name="build_chat_example")
            examples.append(_chat_example(got, _chat_label(messages, max_length)))
            modified.append(given != messages)
        messages, max_length = _NO_ROOM
        try:
            result = build_chat_example(tok, copy.deepcopy(messages), max_length)
        except ValueError as err:
            no_room = {"kind": "ValueError", "message": error_text(err)}
        except NotImplementedError:
            no_room = {"kind": "other", "found": "NotImplementedError"}
        except Exception as err:
            no_room = {"kind": "other", "found": f"{type(err).__name__}: {error_text(err)}"}
        else:
            ids = result.get("input_ids") if isinstance(result, dict) else None
            no_room = {"kind": "returned", "length": len(ids) if isinstance(ids, list) else None}
    return {"examples": examples, "modified": modified, "no_room": no_room}


def _positions(tok, ids: list[int]) -> list[str]:
    """What each token of a ChatML rendering is: "user", "header assistant", "end of turn assistant"...

    The tiny tokenizer has one token per byte, so the header of a turn is ``<|im_start|>``,
    the role's letters and a newline, and the turn's text runs to ``<|im_end|>``.
    """
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    newline = tok("\n", add_special_tokens=False)["input_ids"][0]
    kinds, i, role = [], 0, ""
    while i < len(ids):
        if ids[i] == start:
            j = i + 1
            while j < len(ids) and ids[j] != newline:
                j += 1
            role = tok.decode(ids[i + 1:j])
            kinds += [f"header {role}"] * (min(j + 1, len(ids)) - i)
            i = j + 1
            while i < len(ids) and ids[i] not in (start, end):
                kinds.append(role)
                i += 1
            if i < len(ids) and ids[i] == end:
                kinds.append(f"end of turn {role}")
                i += 1
        else:
            kinds.append("between")
            i += 1
    return kinds


_PLACES = {"system": "the system turn", "user": "a user's turn", "assistant": "an assistant reply",
           "header assistant": "the assistant's header (<|im_start|>assistant and its newline)",
           "header user": "a user turn's header", "header system": "the system turn's header",
           "end of turn assistant": "the end-of-turn token after a reply",
           "end of turn user": "the end-of-turn token after a user's turn",
           "end of turn system": "the end-of-turn token after the system turn",
           "between": "the newline between turns"}


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of labelled positions."""
    runs, start = [], None
    for i, t in enumerate(labels + [_IGNORE]):
        if t != _IGNORE and start is None:
            start = i
        elif t == _IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _labels_hint(tok, want: dict, got: dict) -> tuple[str, str]:
    """Where the labels first go wrong, named, and the hint for that mistake."""
    kinds = _positions(tok, want["input_ids"])
    extra = [i for i, (w, g) in enumerate(zip(want["labels"], got["labels"])) if w == _IGNORE and g != _IGNORE]
    missing = [i for i, (w, g) in enumerate(zip(want["labels"], got["labels"])) if w != _IGNORE and g == _IGNORE]
    extra_kinds = {kinds[i] for i in extra}
    missing_kinds = {kinds[i] for i in missing}
    shifted = got["labels"][:-1] == want["labels"][1:] or got["labels"][1:] == want["labels"][:-1]
    if shifted:
        return ("labels are shifted by one position", "Do not shift the labels: labels[i] is input_ids[i] or -100; "
                "the loss (and the model) shifts them once, later.")
    if extra_kinds & {"user", "end of turn user", "header user"}:
        where = "the user's turns"
        hint = ("Only the assistant's replies are learned: the user's turns are given, not predicted, "
                "so their tokens get -100.")
    elif extra_kinds & {"system", "end of turn system", "header system"}:
        where = "the system turn"
        hint = "The system turn is given, not predicted: its tokens get -100."
    elif "header assistant" in extra_kinds:
        where = "the assistant's header"
        hint = ("The header <|im_start|>assistant and its newline is written by the template "
                "(add_generation_prompt=True) when the model is asked to reply; it is not learned: -100. "
                "Label from the reply's first token.")
    elif "end of turn assistant" in missing_kinds and "assistant" not in missing_kinds:
        where = "the end-of-turn token after a reply"
        hint = ("Label the end-of-turn token (end_of_turn_id(tokenizer)) after each reply too: a model that "
                "never learns it never stops talking.")
    elif "assistant" in missing_kinds and _runs(got["labels"]) and _runs(got["labels"]) == _runs(want["labels"])[-1:]:
        where = "the earlier replies"
        hint = ("Every assistant reply is learned, not only the last: label each reply and its end of turn, "
                "so one conversation teaches every answer in its context.")
    elif extra or missing:
        first = min(extra + missing)
        where = _PLACES.get(kinds[first], kinds[first])
        hint = "labels equal input_ids on each assistant reply and its end-of-turn token, -100 everywhere else."
    else:
        where = "the reply tokens"
        hint = "Where a token is labelled, its label is the token itself (labels[i] == input_ids[i])."
    return where, hint


def _full_render(tok, messages) -> list[int]:
    text = tok.apply_chat_template(list(messages), tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def _ids_hint(tok, messages: list[dict], max_length: int, want: list[int], got: list[int]) -> str:
    full = _full_render(tok, messages)
    whole = reference_chat.build_chat_example(tok, messages, 10**6)["input_ids"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    text = tok.decode(got)
    if got == whole + full[len(whole):] or (got[:len(want)] == want and len(got) == len(want) + 1):
        return "Stop at the last end-of-turn token: leave out the newline the template writes after it."
    for source in (whole, full):
        if got in (source[:max_length], source[-max_length:]) and got != want:
            return ("Cutting tokens cut a turn in half (a reply cut short teaches the model to stop "
                    "mid-sentence): drop whole exchanges, a user turn and its reply, from the start instead.")
    if system is not None and system not in text and system in tok.decode(want):
        return ("Keep the system turn when you drop old exchanges: it tells the model how to behave in every "
                "exchange; drop user-assistant pairs after it.")
    if len(got) > max_length:
        return (f"The example has {len(got)} tokens, more than max_length={max_length}: drop the oldest exchanges "
                "(a user turn and its reply) until it fits.")
    head = 1 if system is not None else 0
    for start in range(head, len(messages), 2):
        shorter = reference_chat.build_chat_example(tok, messages[:head] + messages[start:], 10**6)["input_ids"]
        if got == shorter:
            return ("Drop only as many of the oldest exchanges as needed: the longest ending that fits in "
                    "max_length.")
    return ("Render the conversation with tokenizer.apply_chat_template(messages, tokenize=False), tokenize that "
            "with add_special_tokens=False, and end at the last reply's end-of-turn token.")


def check_build_chat_example(build_chat_example, *, thorough: bool = False) -> None:
    """The conversation rendered with the template, every reply and its end of turn labelled, whole
    exchanges dropped (never the system turn, never half a reply) when too long."""
    observed = observe(probe_build_chat_example, build_chat_example, thorough=thorough)
    expect(isinstance(observed, dict) and {"examples", "modified", "no_room"} <= set(observed),
           "The check could not read what build_chat_example returned.", "examples", type(observed).__name__)
    tok = _tokenizer()
    with quiet():
        cases = _chat_cases(tok, thorough)
        for (messages, max_length), got, modified in zip(cases, observed["examples"], observed["modified"],
                                                          strict=True):
            label = _chat_label(messages, max_length)
            got = _chat_example(got, label)
            expect(modified is False, f"build_chat_example changed the messages it was given ({label}).",
                   "the list and its dicts unchanged", "changed",
                   "Work on a copy (or on slices) of the list: the caller's conversation is data to keep.")
            want = reference_chat.build_chat_example(tok, messages, max_length)
            if got["input_ids"] != want["input_ids"]:
                raise CheckFailure(f"input_ids differ from the conversation rendered with the chat template ({label}).",
                                   tok.decode(want["input_ids"]), tok.decode(got["input_ids"]),
                                   _ids_hint(tok, messages, max_length, want["input_ids"], got["input_ids"]))
            expect(got["attention_mask"] == want["attention_mask"], f"attention_mask should be all 1 ({label}).",
                   "all 1", got["attention_mask"])
            if got["labels"] != want["labels"]:
                where, hint = _labels_hint(tok, want, got)
                diff = first_difference(want["labels"], got["labels"], context=3)
                at = f", first at {diff[0]}" if diff else ""
                raise CheckFailure(f"labels are wrong on {where} ({label}{at}).",
                                   diff[1] if diff else want["labels"], diff[2] if diff else got["labels"], hint)
        messages, max_length = _NO_ROOM
        no_room = observed["no_room"]
        expect(isinstance(no_room, dict) and no_room.get("kind") in ("ValueError", "other", "returned"),
               "The check could not read what build_chat_example did with a conversation too long.", "a report",
               no_room)
        if no_room["kind"] != "ValueError":
            found = (no_room.get("found") if no_room["kind"] == "other"
                     else f"an example of {no_room.get('length')} tokens, no error")
            raise CheckFailure(f"The last exchange alone does not fit ({_chat_label(messages, max_length)}): "
                               "build_chat_example should raise ValueError, as its docstring says.",
                               "ValueError", found,
                               "When even the system turn and the last exchange are longer than max_length, there "
                               "is nothing whole left to learn from: raise ValueError rather than cut the reply.")


# --------------------------------------------------------------------------- sample_next_token

_ROWS = 4000  # draws of one distribution: a frequency's standard error is below 0.008


def _repeat(probs: list[float], rows: int = _ROWS) -> torch.Tensor:
    return torch.tensor([probs]).log().repeat(rows, 1)


def _sampling_cases(thorough: bool) -> list[dict]:
    """Named cases: logits, temperature, top_p, seed. Frequencies are compared where ``rows`` repeat one row."""
    g = torch.Generator().manual_seed(0)
    cases = [
        {"name": "greedy", "logits": torch.randn(6, 11, generator=g), "temperature": 0.0, "top_p": 0.9},
        {"name": "greedy, top_p 1", "logits": torch.randn(3, 7, generator=g) * 3, "temperature": 0.0, "top_p": 1.0},
        {"name": "plain", "logits": _repeat([0.7, 0.2, 0.1]), "temperature": 1.0, "top_p": 1.0},
        {"name": "hot", "logits": _repeat([0.7, 0.2, 0.1]), "temperature": 2.0, "top_p": 1.0},
        {"name": "top-p edge", "logits": _repeat([0.5, 0.3, 0.2], 200), "temperature": 1.0, "top_p": 0.3},
        {"name": "nucleus", "logits": _repeat([0.5, 0.3, 0.15, 0.05]), "temperature": 1.0, "top_p": 0.7},
        {"name": "cold nucleus", "logits": _repeat([0.5, 0.3, 0.2]), "temperature": 0.25, "top_p": 0.9},
    ]
    if thorough:
        rows = torch.randn(8, 30, generator=g) * 2
        cases += [{"name": "rows", "logits": rows.repeat_interleave(200, dim=0), "temperature": 0.7, "top_p": 0.8},
                  {"name": "cold", "logits": _repeat([0.4, 0.35, 0.25]), "temperature": 0.5, "top_p": 1.0}]
    return cases


def _seed_cases() -> list[tuple[torch.Tensor, float, float]]:
    """(logits, temperature, top_p) whose draws must repeat with the same seed and change with another."""
    g = torch.Generator().manual_seed(1)
    return [(torch.zeros(64, 50), 1.0, 1.0), (torch.randn(64, 50, generator=g), 1.0, 0.9)]


def _token_tensor(value) -> torch.Tensor | None:
    return value.detach().clone() if type(value) in (torch.Tensor, nn.Parameter) else None


def _describe_tensor(value) -> str:
    return f"{type(value).__name__} {getattr(value, 'dtype', '')} {tuple(getattr(value, 'shape', ()))}"


def probe_sample_next_token(sample_next_token, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: their tokens for each case (seeded), repeated draws, and whether
    the logits survived."""
    name = "sample_next_token"
    with quiet():
        draws = []
        for case in _sampling_cases(thorough):
            logits = case["logits"].clone()
            got, error = _attempt(sample_next_token, name, logits, case["temperature"], case["top_p"],
                                  torch.Generator().manual_seed(0))
            draws.append({"tokens": _token_tensor(got), "found": _describe_tensor(got), "error": error,
                          "modified": not torch.equal(logits, case["logits"])})
        seeds = []
        for logits, temperature, top_p in _seed_cases():
            runs = [call(sample_next_token, logits.clone(), temperature, top_p, torch.Generator().manual_seed(s),
                         name=name) for s in (3, 3, 4)]
            seeds.append([_token_tensor(r) for r in runs])
    return {"draws": draws, "seeds": seeds}


def _nucleus(logits: torch.Tensor, temperature: float, top_p: float, *, order: str = "temperature first",
             cut: str = "reference") -> torch.Tensor:
    """(B, V) probabilities of each token being drawn, computed, not sampled.

    ``order="top_p first"``: the nucleus of the untempered distribution, then the temperature;
    ``cut="strict"``: ``cumsum < top_p`` without keeping the top token. Both are the mistakes
    the check names.
    """
    logits = logits.double()
    if temperature == 0:
        return nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).double()
    tempered = torch.softmax(logits / temperature, -1)
    basis = torch.softmax(logits, -1) if order == "top_p first" else tempered
    sorted_probs, sort = basis.sort(-1, descending=True)
    if cut == "strict":
        keep_sorted = sorted_probs.cumsum(-1) < top_p
    else:
        keep_sorted = sorted_probs.cumsum(-1) - sorted_probs < top_p
        keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, sort, keep_sorted)
    kept = tempered * keep
    return kept / kept.sum(-1, keepdim=True).clamp(min=1e-300)


def _grouped(tokens: torch.Tensor, logits: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per distinct row of ``logits`` (the cases repeat rows): how often each token was drawn, and
    how often it should be."""
    _, group = torch.unique(logits, dim=0, return_inverse=True)
    n, vocab = int(group.max()) + 1, logits.shape[-1]
    counts = torch.zeros(n, vocab, dtype=torch.float64).index_put_(
        (group, tokens), torch.ones(len(tokens), dtype=torch.float64), accumulate=True)
    size = counts.sum(-1, keepdim=True)
    expected = torch.zeros(n, vocab, dtype=torch.float64).index_add_(0, group, probs) / size
    return counts / size, expected


def _tolerance(draws: int) -> float:
    """Five standard errors of a frequency at most: a correct sampler misses it about once in a million."""
    return 5 * (0.25 / draws) ** 0.5


def _fits(tokens: torch.Tensor, logits: torch.Tensor, probs: torch.Tensor) -> bool:
    """Every draw possible under ``probs``, and the frequencies within `_tolerance` of them."""
    if not bool((probs[torch.arange(len(tokens)), tokens] > 0).all()):
        return False
    freq, expected = _grouped(tokens, logits, probs)
    draws = len(tokens) // freq.shape[0]
    return bool(((freq - expected).abs() <= _tolerance(draws)).all())


def _shown(probs: torch.Tensor) -> list[float]:
    return [round(float(p), 3) for p in probs]


def _read_tokens(seen: dict, rows: int, case: str) -> torch.Tensor:
    got = seen.get("tokens")
    expect(type(got) is torch.Tensor and not got.is_floating_point() and got.dtype != torch.bool,
           f"sample_next_token should return a tensor of token ids ({case}).", "torch.Tensor of int64, shape (B,)",
           seen.get("found"), "torch.multinomial and argmax both give int64 ids.")
    expect(tuple(got.shape) == (rows,), f"sample_next_token should return one token per row, shape (B,) ({case}).",
           f"shape ({rows},)", f"shape {tuple(got.shape)}",
           "torch.multinomial(probs, 1) gives (B, 1): squeeze(-1) it (argmax(dim=-1) is already (B,)).")
    return got.long()


def check_sample_next_token(sample_next_token, *, thorough: bool = False) -> None:
    """Greedy at temperature 0; temperature, then the nucleus (top token always kept); one (B,) draw
    per row from the seeded generator; the logits left unchanged."""
    observed = observe(probe_sample_next_token, sample_next_token, thorough=thorough)
    expect(isinstance(observed, dict) and {"draws", "seeds"} <= set(observed),
           "The check could not read what sample_next_token returned.", "draws", type(observed).__name__)
    with quiet():
        cases = _sampling_cases(thorough)
        for case, seen in zip(cases, observed["draws"], strict=True):
            logits, temperature, top_p = case["logits"], case["temperature"], case["top_p"]
            label = f"temperature {temperature}, top_p {top_p}"
            if seen["error"] is not None:
                if temperature == 0:
                    raise CheckFailure(f"At temperature 0, sample_next_token should return the most likely token "
                                       f"({label}); it failed instead.", "logits.argmax(dim=-1)", seen["error"],
                                       "Temperature 0 means greedy: return logits.argmax(dim=-1) before dividing by the "
                                       "temperature (x / 0 is inf, and the softmax of inf is nan).")
                if case["name"] == "top-p edge":
                    raise CheckFailure(f"When the most likely token alone holds more than top_p ({label}, "
                                       "probabilities 0.5, 0.3, 0.2), sample_next_token failed: its nucleus was empty.",
                                       "always the most likely token", seen["error"],
                                       "A token stays if the tokens more likely than it hold less than top_p "
                                       "(cumsum - p < top_p): the smallest set that reaches top_p, never empty.")
                raise CheckFailure(f"sample_next_token failed on {tuple(logits.shape)} logits ({label}).",
                                   "a (B,) tensor of token ids", seen["error"],
                                   "Call it on the same kind of input in the scratch cell below the exercise.")
            got = _read_tokens(seen, logits.shape[0], label)
            expect(seen["modified"] is False, f"sample_next_token changed the logits it was given ({label}).",
                   "unchanged", "modified", "Divide into a new tensor (logits / temperature), not in place (/=).")
            if temperature == 0:
                want = logits.argmax(-1)
                expect(bool(torch.equal(got, want)), f"At temperature 0, sample_next_token should be greedy ({label}).",
                       want.tolist(), got.tolist(), "Temperature 0 means the most likely token: logits.argmax(dim=-1).")
                continue
            probs = _nucleus(logits, temperature, top_p)
            if _fits(got, logits, probs):
                continue
            freq, _ = _grouped(got, logits, probs)
            one_row = freq.shape[0] == 1
            shown = f"frequencies {_shown(freq[0])}" if one_row else f"tokens {got[:12].tolist()}"
            if case["name"] == "top-p edge":
                raise CheckFailure(f"When the most likely token alone holds more than top_p ({label}, "
                                   "probabilities 0.5, 0.3, 0.2), only it may be drawn.", "token 0 every time", shown,
                                   "Always keep the most likely token: a token stays if the tokens more likely than it "
                                   "hold less than top_p (cumsum - p < top_p).")
            if top_p < 1 and _fits(got, logits, _nucleus(logits, temperature, top_p, order="top_p first")):
                hint = ("Apply the temperature first, then cut the nucleus: the temperature changes which tokens "
                        "reach top_p (a cold distribution needs fewer).")
            elif top_p < 1 and _fits(got, logits, _nucleus(logits, temperature, top_p, cut="strict")):
                hint = ("The nucleus is the smallest set that reaches top_p, so it includes the token that crosses it: "
                        "keep a token if the tokens before it hold less than top_p (cumsum - p < top_p), and always "
                        "the first; cumsum < top_p drops that token, and keeps none when the top one exceeds top_p.")
            elif _fits(got, logits, _nucleus(logits, 1 / temperature, top_p)):
                hint = "Divide the logits by the temperature (a high temperature flattens the distribution)."
            elif _fits(got, logits, _nucleus(logits, 1.0, top_p)) and temperature != 1:
                hint = "Divide the logits by the temperature before the softmax."
            elif _fits(got, logits, _nucleus(logits, temperature, 1.0)) and top_p < 1:
                hint = ("Sample from the nucleus only: the smallest set of most likely tokens whose probabilities "
                        "reach top_p, renormalized.")
            else:
                hint = ("Draw with torch.multinomial(probabilities, 1, generator=generator) from softmax(logits / "
                        "temperature), restricted to the nucleus.")
            expected = (f"frequencies {_shown(probs[0])} (+/- {_tolerance(len(got)):.2f})" if one_row
                        else "each row's draws inside its own nucleus")
            raise CheckFailure(f"The tokens drawn do not follow the nucleus distribution ({label}, "
                               f"{logits.shape[0]} draws).", expected, shown, hint)
        for (logits, temperature, top_p), runs in zip(_seed_cases(), observed["seeds"], strict=True):
            label = f"temperature {temperature}, top_p {top_p}"
            first, again, other = (_read_tokens({"tokens": r, "found": _describe_tensor(r)}, logits.shape[0], label)
                                   for r in runs)
            expect(bool(torch.equal(first, again)),
                   f"The same seed should give the same tokens ({label}): two generators seeded with 3 drew differently.",
                   first[:10].tolist(), again[:10].tolist(),
                   "Pass the generator to every random draw: torch.multinomial(probs, 1, generator=generator). "
                   "Without it the draw uses torch's global random state, and the run cannot be repeated.")
            expect(not bool(torch.equal(first, other)),
                   f"Another seed should give other tokens ({label}): seeds 3 and 4 drew the same {logits.shape[0]} "
                   "tokens.", "different draws", first[:10].tolist(),
                   "Draw from the generator you are given (do not seed a new one inside the function).")


# --------------------------------------------------------------------------- generate_with_cache

def tiny_decoder() -> nn.Module:
    """The tiny random Llama of the decoding check, in eval mode: its greedy continuations vary
    (weights drawn with a larger spread than a real model's), so a decode loop that loses its
    context gives other tokens."""
    from transformers import LlamaForCausalLM

    from ftlib.models import tiny_llama_config

    with quiet():
        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_llama_config(initializer_range=0.5)).eval()


class _Spy(nn.Module):
    """Forwards to a causal LM, recording the length of the input of each forward call and
    whether gradients were on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.lengths, self.grad, self.generated = inner, [], [], False

    def forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lengths.append(int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else -1)
        self.grad.append(torch.is_grad_enabled())
        return self.inner(*args, **kwargs)

    def generate(self, *args, **kwargs):
        self.generated = True
        return self.inner.generate(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


_GENERATE_PROMPTS = ("Hello there", "Is this review positive? Great film.", "Write a headline: rain in London.")


def _generate_cases(model: nn.Module, thorough: bool) -> list[tuple[list[int], int, int | None]]:
    """(prompt ids, max_new_tokens, eos_token_id): free runs, and runs stopped by a token the
    model does generate (its 4th or 6th greedy token), so that stopping shows."""
    from ftlib.generative.sft import prompt_ids

    tok = _tokenizer()
    ids = [prompt_ids(tok, p) for p in _GENERATE_PROMPTS]
    free = [reference_decoding.generate_with_cache(model, i, 12, None) for i in ids]
    cases = [(ids[0], 12, None), (ids[0], 12, free[0][3]), (ids[1], 10, free[1][5])]
    if thorough:
        cases += [(ids[2], 9, None), (ids[2], 12, free[2][0]), (ids[1], 1, None), (ids[1], 0, free[1][0])]
    return cases


def probe_generate_with_cache(generate_with_cache, *, cases: list) -> list[dict]:
    """Where the learner's code runs: their tokens for each prompt, and the input length and
    gradient state of every forward call they made."""
    model = tiny_decoder()
    with quiet():
        observed = []
        for prompt, max_new, eos in cases:
            spy = _Spy(model)
            ids = torch.tensor([prompt])
            got = call(generate_with_cache, spy, ids, max_new, eos, name="generate_with_cache")
            is_ints = type(got) is list and all(type(t) is int for t in got)
            observed.append({"tokens": list(got) if is_ints else None, "type": _describe_tensor(got) if
                             isinstance(got, torch.Tensor) else type(got).__name__,
                             "lengths": [int(n) for n in spy.lengths], "grad": [bool(g) for g in spy.grad],
                             "generated": bool(spy.generated), "prompt_kept": torch.equal(ids, torch.tensor([prompt]))})
        return observed


def _no_cache_passed(model: nn.Module, prompt: list[int], max_new: int, eos) -> list[int]:
    """The tokens of a loop that feeds only the new token but never hands the cache back."""
    new: list[int] = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt]))
        while len(new) < max_new:
            new.append(int(out.logits[0, -1].argmax()))
            if new[-1] == eos:
                break
            out = model(input_ids=torch.tensor([[new[-1]]]))
    return new


def check_generate_with_cache(generate_with_cache, *, thorough: bool = False) -> None:
    """The greedy tokens of model.generate, new tokens only, up to and with eos; the prompt fed
    once, then one token per forward call (the cache), without gradients."""
    model = tiny_decoder()
    with quiet():
        cases = _generate_cases(model, thorough)
    observed = observe(probe_generate_with_cache, generate_with_cache, cases=[list(c) for c in cases])
    with quiet():
        for (prompt, max_new, eos), seen in zip(cases, observed, strict=True):
            label = f"a prompt of {len(prompt)} tokens, max_new_tokens {max_new}, eos_token_id {eos}"
            want = reference_decoding.generate_with_cache(model, prompt, max_new, eos)
            expect(seen["generated"] is False, "generate_with_cache should write the decoding loop itself.",
                   "model(...) called once per token", "model.generate(...)",
                   "model.generate hides the loop this exercise is about: call the model, pick the argmax, feed it "
                   "back with the cache.")
            got = seen["tokens"]
            if got is None:
                raise CheckFailure(f"generate_with_cache should return a list of ints ({label}).", "list of int",
                                   seen["type"], "Collect the new tokens as Python ints (int(tensor) or .tolist()).")
            expect(seen["prompt_kept"] is True, f"generate_with_cache changed the input_ids it was given ({label}).",
                   "unchanged", "modified")
            if got != want:
                if got == prompt + want:
                    hint = "Return only the new tokens, not the prompt before them."
                elif got == want[:-1] and want and want[-1] == eos:
                    hint = ("The eos token itself is part of the answer: append it, then stop (the caller sees "
                            "that the model chose to end).")
                elif got == want[:-1]:
                    hint = (f"One token short: generate max_new_tokens={max_new} tokens when eos is not reached "
                            "(the token chosen from the prompt's forward pass counts as the first).")
                elif len(got) > len(want) and got[:len(want)] == want:
                    hint = (f"Stop right after eos_token_id ({eos}): the tokens after it are not part of the answer."
                            if eos is not None else f"Generate at most max_new_tokens={max_new} tokens.")
                elif got == _no_cache_passed(model, prompt, max_new, eos):
                    hint = ("Feeding only the new token is right, but pass the cache back with it "
                            "(model(input_ids=..., cache=out.cache, use_cache=True)): without it the model sees one "
                            "token, not the conversation.")
                else:
                    hint = "Greedy: each new token is the argmax of the logits at the last position."
                raise CheckFailure(f"The tokens differ from greedy decoding ({label}).", want, got, hint)
            lengths = seen["lengths"]
            if not want:
                continue
            expect(bool(lengths), f"generate_with_cache never called the model ({label}).", "model(...) calls",
                   "none", "Call the model you are given (model(input_ids=...)), not a copy or its parts.")
            expect(lengths[0] == len(prompt) and all(n == 1 for n in lengths[1:]) and len(lengths) <= len(want) + 1,
                   f"Each step should feed the model only the token just chosen, with the cache ({label}).",
                   f"input lengths [{len(prompt)}, 1, 1, ...] ({len(want)} calls)",
                   f"input lengths {lengths[:8]}{' ...' if len(lengths) > 8 else ''} ({len(lengths)} calls)",
                   "Feeding the whole sequence again at every step costs t positions at step t (quadratic); run the "
                   "prompt once, then pass only the new token and the cache: model(input_ids=token, "
                   "cache=out.cache, use_cache=True).")
            expect(not any(seen["grad"]), f"Decoding should run without gradients ({label}).", "torch.no_grad()",
                   "gradients enabled", "Wrap the loop in `with torch.no_grad():` (or torch.inference_mode()): "
                   "nothing is trained, and the graph would keep every step's activations.")


# --------------------------------------------------------------------------- rouge_l

# (prediction, reference): each catches one way of getting ROUGE-L wrong (see the hints).
_ROUGE_CASES = [
    ("police arrest man after crash", "man arrested after car crash"),
    ("Storm Ciara batters UK", "storm ciara causes travel chaos across uk"),
    ("a b c d", "d c b a x"),
    ("Brexit: what's next for the UK?", "What next for Brexit and the UK"),
    ("", "something"),
]
_ROUGE_THOROUGH = [
    ("same words here", "same words here"),
    ("a a a b", "a b a a"),
    ("UK economy grows 0.3% in third quarter", "UK economy grew by 0.3% in the third quarter, ONS says"),
    ("no overlap at all", "completely different headline"),
    ("something", ""),
]


_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def _rouge_cases(thorough: bool) -> list[tuple[str, str]]:
    return _ROUGE_CASES + (_ROUGE_THOROUGH if thorough else [])


def probe_rouge_l(rouge_l, *, thorough: bool = False) -> list[float]:
    """Where the learner's code runs: their score for each pair."""
    with quiet():
        return [as_float(call(rouge_l, p, r, name="rouge_l"), f"rouge_l({p!r}, {r!r})") for p, r in
                _rouge_cases(thorough)]


def _lcs_f1(p: list, r: list) -> dict[str, float]:
    """F1, precision and recall of the longest common subsequence of two token lists (0 when either is empty)."""
    lcs = reference_metrics.lcs_length(p, r)
    if lcs == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    precision, recall = lcs / len(p), lcs / len(r)
    return {"f1": 2 * precision * recall / (precision + recall), "precision": precision, "recall": recall}


def _rouge_variants(prediction: str, reference: str) -> list[tuple[float, str]]:
    """What each mistake would score on this pair, with its hint, most specific first."""
    words = reference_metrics.words
    p, r = words(prediction), words(reference)
    scores = _lcs_f1(p, r)
    chars_p = [c for c in prediction.lower() if c.isalnum()]
    chars_r = [c for c in reference.lower() if c.isalnum()]
    return [
        (scores["recall"], "That is the recall alone (LCS / reference length). ROUGE-L here is the F-measure: "
                           "precision = LCS / prediction length, recall = LCS / reference length, 2PR / (P + R)."),
        (scores["precision"], "That is the precision alone (LCS / prediction length): divide by the reference's "
                              "length for the recall, and return their F-measure 2PR / (P + R)."),
        (reference_metrics.rouge_n(prediction, reference, 1),
         "That counts common words regardless of order (ROUGE-1): ROUGE-L uses the longest common subsequence, "
         "the words both share in the same order."),
        (_lcs_f1(prediction.lower().split(), reference.lower().split())["f1"],
         "Splitting on spaces keeps punctuation on the words ('brexit:' is not 'brexit'): replace every character "
         "that is not a letter or a digit by a space first, as rouge-score does (re.sub(r'[^a-z0-9]+', ' ', text))."),
        (_lcs_f1(_NOT_ALNUM.sub(" ", prediction).split(), _NOT_ALNUM.sub(" ", reference).split())["f1"],
         "Words are compared in lower case ('UK' and 'uk' are one word): lower-case both texts first."),
        (_lcs_f1(chars_p, chars_r)["f1"], "ROUGE-L compares words, not characters: split the texts into words."),
        (_lcs_f1(list(prediction.lower()), list(reference.lower()))["f1"],
         "ROUGE-L compares words, not characters: split the texts into words."),
    ]


def check_rouge_l(rouge_l, *, thorough: bool = False) -> None:
    """ROUGE-L F1 on lower-cased words (runs of letters and digits), as rouge-score without stemming."""
    observed = observe(probe_rouge_l, rouge_l, thorough=thorough)
    for (prediction, reference), got in zip(_rouge_cases(thorough), observed, strict=True):
        got = as_float(got, f"rouge_l({prediction!r}, {reference!r})")
        want = reference_metrics.rouge_l(prediction, reference)
        if abs(got - want) <= 1e-9:
            continue
        hint = next((h for value, h in _rouge_variants(prediction, reference) if abs(value - got) <= 1e-9),
                    "Lower-case, keep runs of letters and digits as words, take the longest common subsequence of "
                    "the two word lists, and return the F-measure of LCS / len(prediction) and LCS / len(reference).")
        raise CheckFailure(f"rouge_l({prediction!r}, {reference!r}) differs from ROUGE-L.", round(want, 4),
                           round(got, 4), hint)
