"""ftlib.generative.chat: conversations as training examples (tiny ChatML tokenizer, no downloads)."""
import pytest

from ftlib.generative.chat import build_chat_example, check_messages
from ftlib.generative.sft import IGNORE_INDEX, build_sft_example, chat_messages
from ftlib.models import tiny_chat_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_chat_tokenizer()


def _m(*pairs, system=None):
    out = [{"role": "system", "content": system}] if system is not None else []
    for user, assistant in pairs:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return out


def _learned(tok, ex):
    return tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])


def test_the_example_is_the_whole_rendered_conversation(tok):
    messages = _m(("Hi", "Hello"), ("How are you?", "Fine, thanks."), system="Be brief.")
    ex = build_chat_example(tok, messages, 512)
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ex["input_ids"]) == rendered.rstrip("\n")  # ChatML's newline after the last turn is never generated
    assert len(ex["input_ids"]) == len(ex["labels"]) == len(ex["attention_mask"])
    assert set(ex["attention_mask"]) == {1}


def test_every_assistant_reply_and_its_end_of_turn_is_learned_and_nothing_else(tok):
    ex = build_chat_example(tok, _m(("Hi", "Hello"), ("Bye", "Bye!")), 512)
    assert _learned(tok, ex) == "Hello<|im_end|>Bye!<|im_end|>"
    learned = [i for i, t in enumerate(ex["labels"]) if t != IGNORE_INDEX]
    assert all(ex["labels"][i] == ex["input_ids"][i] for i in learned)
    assert ex["labels"][-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_one_exchange_is_build_sft_example(tok):
    messages = chat_messages("Is it good?", "yes")
    assert build_chat_example(tok, messages, 256) == build_sft_example(tok, "Is it good?", "yes", 256)


def test_too_long_drops_whole_oldest_exchanges_and_keeps_the_system_turn(tok):
    messages = _m(("first question " * 5, "first answer " * 5), ("second", "second answer"), system="Sys.")
    full = build_chat_example(tok, messages, 10_000)
    short = build_chat_example(tok, messages, len(full["input_ids"]) - 1)
    assert _learned(tok, short) == "second answer<|im_end|>"
    assert tok.decode(short["input_ids"]) == tok.apply_chat_template(
        [messages[0], *messages[3:]], tokenize=False).rstrip("\n")
    with pytest.raises(ValueError, match="last exchange alone takes"):
        build_chat_example(tok, messages, 5)


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user"}], "Message 1 is not"),
    ([{"role": "bot", "content": "x"}], "unknown role 'bot'"),
    ([{"role": "user", "content": 3}], "content of type int"),
    (_m(("a", "b")) + [{"role": "system", "content": "late"}, {"role": "assistant", "content": "c"}],
     "Message 3 is a system turn"),
    ([{"role": "assistant", "content": "a"}], "Message 1 is from the assistant where the user speaks"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "Message 2 is from the user"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}], "Message 2 is an empty assistant"),
    (_m(("a", "b")) + [{"role": "user", "content": "c"}], "ends on the user"),
    ([{"role": "system", "content": "s"}], "ends on the user"),
])
def test_a_bad_conversation_gets_one_line_that_names_the_problem(tok, messages, message):
    with pytest.raises(ValueError, match=message) as info:
        build_chat_example(tok, messages, 256)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        check_messages(messages)


def test_extra_keys_are_dropped_and_the_input_is_not_modified():
    messages = [{"role": "user", "content": "a", "name": "x"}, {"role": "assistant", "content": "b"}]
    assert check_messages(messages) == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert messages[0]["name"] == "x"
