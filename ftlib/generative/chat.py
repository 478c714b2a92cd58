"""Conversations as training examples: every assistant reply is learned, nothing else.

A chat data set holds conversations: a list of ``{"role", "content"}`` messages (the
format of TRL and of OpenAI's fine-tuning API), an optional system turn first, then user
and assistant turns in alternation, ending on the assistant. :func:`build_chat_example`
renders one with the model's chat template and labels the tokens of *each* assistant
reply and the end-of-turn token after it; the system turn, the users' turns and the
template's headers get ``-100``. The model learns to answer in context, and to stop.

Too long for ``max_length``? Whole exchanges (a user turn and its reply) are dropped from
the start, the system turn kept, until the rest fits: a reply is never cut in half, as a
half reply would teach the model to stop mid-sentence. A conversation whose last exchange
alone does not fit raises ``ValueError``; a data loader skips it and counts it.

:func:`check_messages` says, in one line, what is wrong with a conversation that is not one.
"""
from __future__ import annotations

from typing import Sequence

from ftlib import arguments
from ftlib.data.chats import ROLES, check_messages
from ftlib.generative.sft import IGNORE_INDEX, end_of_turn_id

__all__ = ["ROLES", "check_messages", "build_chat_example"]

def _render(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels of a checked conversation, the assistant replies labelled."""
    eot = end_of_turn_id(tokenizer)
    eot_text = tokenizer.convert_ids_to_tokens(eot)
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text rendered so far
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
        if not before.startswith(done):
            raise ValueError("The chat template renders a conversation differently from its beginning; "
                             "build_chat_example needs a template that only appends turns (ChatML does).")
        context = tokenizer(before[len(done):], add_special_tokens=False)["input_ids"]
        reply = tokenizer(m["content"], add_special_tokens=False)["input_ids"] + [eot]
        ids += context + reply
        labels += [IGNORE_INDEX] * len(context) + reply
        done = before + m["content"] + eot_text
    return ids, labels


def build_chat_example(tokenizer, messages: Sequence[dict], max_length: int) -> dict:
    """One training example from a conversation: its tokens, with labels on every assistant reply.

    Parameters
    ----------
    tokenizer
        A tokenizer with a chat template (``tokenizer.apply_chat_template``).
    messages : list of dict
        ``{"role", "content"}`` messages: an optional system turn, then user and assistant in
        turn, ending on the assistant (see :func:`check_messages`).
    max_length : int
        The most tokens the example may have. Longer conversations lose their oldest whole
        exchanges (user turn and reply), never the system turn, never part of a reply.

    Returns
    -------
    dict
        ``input_ids``, ``attention_mask`` and ``labels`` (lists of int, of one length):
        ``labels`` equal ``input_ids`` on each assistant reply and the end-of-turn token that
        closes it, ``-100`` everywhere else.

    Raises
    ------
    ValueError
        The conversation is not one (:func:`check_messages`), or its last exchange alone is
        longer than ``max_length``.

    Examples
    --------
    >>> from ftlib.models import tiny_chat_tokenizer
    >>> tok = tiny_chat_tokenizer()
    >>> ex = build_chat_example(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
    ...                               {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}], 256)
    >>> tok.decode([t for t in ex["labels"] if t != -100])
    'Hello<|im_end|>Bye!<|im_end|>'
    """
    arguments.integer(max_length, "max_length", minimum=2)
    messages = check_messages(messages)
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    for start in range(0, len(turns), 2):  # drop the oldest exchanges until it fits
        ids, labels = _render(tokenizer, system + turns[start:])
        if len(ids) <= max_length:
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
    raise ValueError(f"The conversation's last exchange alone takes {len(ids)} tokens, more than "
                     f"max_length={max_length}; raise max_length or shorten it.")
