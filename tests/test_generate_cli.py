"""`ftlib generate` / `ftlib chat` and ftlib.generative.inference on tiny random Llamas: seconds, no downloads.

The registered tiny-llama's weights are so small that its replies hardly depend on the
prompt; a copy with larger random weights (``initializer_range=0.5``), saved with
``save_pretrained``, answers each prompt differently and is used where that matters.
"""
import io
import json
import os
import select
import subprocess
import sys
import time

import pytest
import torch

from ftlib.cli import main
from ftlib.generative import inference, sft
from ftlib.models import load_causal_lm, tiny_chat_tokenizer, tiny_llama_config

IM_END = 2  # the tiny tokenizer's <|im_end|>: end of turn, EOS and padding


@pytest.fixture(scope="module")
def tok():
    return tiny_chat_tokenizer()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tok):
    """A save_pretrained folder (config, weights, tokenizer) of a tiny Llama whose replies depend on the prompt."""
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(initializer_range=0.5)).eval()
    path = tmp_path_factory.mktemp("model")
    hf_logging.disable_progress_bar()
    model.save_pretrained(path)
    hf_logging.enable_progress_bar()
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, tok):
    """A run folder as `ftlib finetune --model tiny-llama` writes it: metrics.json and adapter/; and the
    adapter-attached model it was saved from."""
    path = tmp_path_factory.mktemp("run")
    torch.manual_seed(3)  # the run's seed: the random base it built
    peft_model = sft.add_lora(load_causal_lm("tiny-llama")[0], r=4, alpha=8)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.7)  # an adapter that changes what the model says
    sft.save_adapter(peft_model, path / "adapter")
    (path / "metrics.json").write_text(json.dumps({"model": "tiny-llama", "task": "text generation",
                                                   "technique": "lora", "seed": 3}))
    return path, peft_model.eval()


def _greedy_reference(model, ids, n):
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=IM_END, pad_token_id=IM_END)
    return out[0, len(ids):].tolist()


def test_greedy_tokens_are_model_generates(folder, tok):
    model, _, _ = inference.load_for_generation(folder)
    for prompt in ["Hello there", "What is 2 + 2?"]:
        ids = inference.prompt_tokens(tok, sft.chat_messages(prompt))
        mine = list(inference.generate_tokens(model, ids, max_new_tokens=40, eos_token_id=IM_END))
        assert mine == _greedy_reference(model, ids, 40)
    # The text is sft.generate's (the decoder the fine-tuning jobs use).
    assert inference.reply(model, tok, "Hello there", max_new_tokens=40) == sft.greedy_generate(
        model, tok, "Hello there", 40)


def test_registered_tiny_llama_is_the_same_model_in_every_load_and_leaves_the_seed_alone(tok):
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, _, description = inference.load_for_generation("tiny-llama")
    assert torch.equal(torch.rand(1), expected)  # the caller's random state is untouched
    b, _, _ = inference.load_for_generation("tiny-llama")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # The weights' type is what the hardware runs natively: bf16 on a CPU with avx512_bf16 or AMX.
    assert "tiny-llama" in description and ("bfloat16" if sft.bf16_is_native() else "float32") in description
    ids = inference.prompt_tokens(tok, sft.chat_messages("hi"))
    assert list(inference.generate_tokens(a, ids, max_new_tokens=20, eos_token_id=IM_END)) == \
        _greedy_reference(a, ids, 20)


def test_a_run_folder_merges_its_adapter_with_the_same_greedy_tokens_as_the_adapter_attached(run, tok):
    path, peft_model = run
    # fp32 as the attached model is: merging, not bf16 rounding (the default where bf16 is native), is tested.
    model, _, description = inference.load_for_generation(path, dtype=torch.float32)
    assert "merged" in description and not any("lora_" in n for n, _ in model.named_parameters())
    ids = inference.prompt_tokens(tok, sft.chat_messages("Tell me a story"))
    attached = _greedy_reference(peft_model, ids, 40)
    assert list(inference.generate_tokens(model, ids, max_new_tokens=40, eos_token_id=IM_END)) == attached
    assert len(set(attached)) > 1  # the adapter matters: not one token repeated
    # The adapter's own folder names the run too.
    again, _, _ = inference.load_for_generation(path / "adapter", dtype=torch.float32)
    assert list(inference.generate_tokens(again, ids, max_new_tokens=40, eos_token_id=IM_END)) == attached


def test_for_inference_merges_a_copy_and_leaves_the_peft_model_as_it_was(run, tok):
    _, peft_model = run
    merged = inference.for_inference(peft_model)
    assert any("lora_" in n for n, _ in peft_model.named_parameters())
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    ids = inference.prompt_tokens(tok, sft.chat_messages("Tell me a story"))
    assert list(inference.generate_tokens(merged, ids, max_new_tokens=30, eos_token_id=IM_END)) == \
        _greedy_reference(peft_model, ids, 30)


def test_a_run_folder_with_merged_weights_loads_them(run, folder, tmp_path):
    import shutil

    path = tmp_path / "run"
    shutil.copytree(run[0], path)
    shutil.copytree(folder, path / "merged")
    model, _, description = inference.load_for_generation(path)
    assert str(path / "merged") in description
    expected, _, _ = inference.load_for_generation(folder)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected.parameters()))


def test_sampling_is_reproducible_with_a_seed_and_varies_with_it(folder, tok):
    model, _, _ = inference.load_for_generation(folder)
    options = dict(max_new_tokens=30, temperature=1.0, top_p=0.95)
    first = inference.reply(model, tok, "Once upon a time", seed=1, **options)
    assert inference.reply(model, tok, "Once upon a time", seed=1, **options) == first
    assert len({inference.reply(model, tok, "Once upon a time", seed=s, **options) for s in range(4)}) > 1


@pytest.mark.parametrize("text", ["café 😀 ok é", "😀😀", "naïve ☕ x"])
def test_streamed_pieces_never_split_a_character(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # multi-byte characters take several tokens
    pieces = list(inference.detokenize(tok, ids))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) == len(text)  # each character as soon as its last byte came


def test_invalid_bytes_still_come_out_at_the_end(tok):
    ids = tok("ab", add_special_tokens=False)["input_ids"] + tok("é", add_special_tokens=False)["input_ids"][:1]
    assert "".join(inference.detokenize(tok, ids)) == "ab\ufffd"


def test_fit_conversation_drops_the_oldest_exchanges_and_keeps_the_system_turn(tok):
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(4):
        messages += [{"role": "user", "content": f"question {i} " + "x" * 40},
                     {"role": "assistant", "content": f"answer {i} " + "y" * 40}]
    messages.append({"role": "user", "content": "last question"})
    whole = len(inference.prompt_tokens(tok, messages))
    assert inference.fit_conversation(tok, messages, whole) == messages
    fitted = inference.fit_conversation(tok, messages, whole - 1)
    assert fitted == messages[:1] + messages[3:]  # exchange 0 went, whole
    tight = inference.fit_conversation(tok, messages, 80)
    assert tight[0] == messages[0] and tight[-1] == messages[-1] and len(tight) % 2 == 0
    assert len(inference.prompt_tokens(tok, tight)) <= 80
    with pytest.raises(ValueError, match="write a shorter one"):
        inference.fit_conversation(tok, messages, 10)


def test_chat_keeps_the_history_and_reuses_the_cache(folder, tok):
    model, _, _ = inference.load_for_generation(folder)
    reads = []  # tokens read by each forward pass
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: reads.append(args[0].shape[1]))
    chat = inference.Chat(model, tok, max_new_tokens=12)
    first = "".join(chat.send("My name is Ada."))
    turn_1, reads[:] = list(reads), []
    second = "".join(chat.send("What is my name?"))
    hook.remove()
    assert [m["content"] for m in chat.messages] == [sft.SYSTEM_PROMPT, "My name is Ada.", first,
                                                     "What is my name?", second]
    rendered = tok.apply_chat_template(chat.messages[:-1], tokenize=False, add_generation_prompt=True)
    assert tok.decode(chat.context_ids).startswith(rendered)  # turn 2 was read after turn 1
    # Turn 2 read only what turn 1 had not: the prompt less the start the cache held (at least turn 1's
    # prompt; the reply too where its text gives back the same tokens, not for these random bytes).
    prompt_2 = len(inference.prompt_tokens(tok, chat.messages[:-1]))
    assert turn_1[0] == len(inference.prompt_tokens(tok, chat.messages[:2]))
    assert reads[0] <= prompt_2 - turn_1[0] and all(n == 1 for n in reads[1:])
    # The same reply as from the whole conversation read afresh.
    assert second == inference.reply(model, tok, chat.messages[:-1], max_new_tokens=12)
    chat.reset()
    assert chat.messages == [{"role": "system", "content": sft.SYSTEM_PROMPT}] and chat.context_ids == []


@pytest.mark.slow  # a subprocess or a training run: make test, not test-fast
def test_chat_says_how_many_exchanges_it_dropped(folder, tok):
    model, _, _ = inference.load_for_generation(folder)  # a 256-token context
    chat = inference.Chat(model, tok, max_new_tokens=100)
    for i in range(4):
        "".join(chat.send(f"message {i}: " + "z" * 50))
    assert chat.dropped_ >= 1 and chat.messages[0]["role"] == "system"
    assert chat.messages[-2]["content"].startswith("message 3")
    assert len(inference.prompt_tokens(tok, chat.messages[:-1])) <= 256 - 100
    with pytest.raises(ValueError, match="write a shorter one"):
        chat.send("w" * 300)


def test_bad_arguments_are_named_at_the_call_before_any_work(folder, tok):
    from ftlib.arguments import ArgumentError

    model, _, _ = inference.load_for_generation(folder)
    for options, name in [({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                          ({"top_p": 2.0}, "top_p"), ({"max_new_tokens": -1}, "max_new_tokens")]:
        with pytest.raises(ArgumentError, match=f"^{name} "):
            inference.generate_tokens(model, [1, 5], eos_token_id=IM_END, **{"max_new_tokens": 4, **options})
    with pytest.raises(ArgumentError, match="^max_new_tokens must leave room"):
        inference.Chat(model, tok, max_new_tokens=256)
    with pytest.raises(TypeError, match="folder or a model name"):
        inference.load_for_generation(3)


# --- the command line -------------------------------------------------------------------------------------

def test_generate_prints_the_reply_and_json_lists_prompt_and_reply(folder, tok, capsys):
    model, _, _ = inference.load_for_generation(folder)
    expected = [inference.reply(model, tok, p, max_new_tokens=16) for p in ["Hi", "Bonjour é"]]
    assert main(["generate", str(folder), "Hi", "--max-new-tokens", "16"]) == 0
    assert capsys.readouterr().out == expected[0] + "\n"
    assert main(["generate", str(folder), "Hi", "Bonjour é", "--max-new-tokens", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"prompt": "Hi", "reply": expected[0]},
                                                   {"prompt": "Bonjour é", "reply": expected[1]}]


def test_generate_writes_each_piece_as_it_comes(folder, monkeypatch):
    class Terminal(io.StringIO):
        def flush(self):
            shown.append(self.getvalue())

    shown = []
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert main(["generate", str(folder), "Hi", "--max-new-tokens", "16"]) == 0
    # Flushed after every piece: the text grows a few characters at a time, never all at once.
    assert len(set(shown)) > 5 and all(b.startswith(a) for a, b in zip(shown, shown[1:]))


def test_generate_reads_prompts_from_a_file_and_samples_with_the_seed(folder, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\n\nsecond prompt\n", encoding="utf-8")
    sampled = ["--temperature", "1.0", "--top-p", "0.9", "--max-new-tokens", "20", "--json"]

    def replies(*extra):
        assert main(["generate", str(folder), "--file", str(prompts), *sampled, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    first = replies("--seed", "5")
    assert [r["prompt"] for r in first] == ["first prompt", "second prompt"]
    assert replies("--seed", "5") == first
    assert replies("--seed", "6") != first


def test_chat_from_stdin_keeps_the_history_resets_and_ends_at_eof(folder, monkeypatch, capsys):
    rendered = []
    real = inference.prompt_tokens
    monkeypatch.setattr(inference, "prompt_tokens", lambda tok, messages: rendered.append(list(messages)) or
                        real(tok, messages))
    monkeypatch.setattr(sys, "stdin", io.StringIO("My name is Ada.\nWhat is my name?\n/reset\nAnd now?\n"))
    assert main(["chat", str(folder), "--max-new-tokens", "8"]) == 0  # EOF: exit 0
    captured = capsys.readouterr()
    assert captured.out.count("you> ") == 5 and "(a new conversation)" in captured.out
    sent = [m for m in rendered if m[-1]["role"] == "user"]
    turn_2 = next(m for m in sent if m[-1]["content"] == "What is my name?")
    assert [m["content"] for m in turn_2[:2]] == [sft.SYSTEM_PROMPT, "My name is Ada."]
    assert turn_2[2]["role"] == "assistant" and len(turn_2) == 4  # the first reply, then the question
    after_reset = next(m for m in sent if m[-1]["content"] == "And now?")
    assert [m["role"] for m in after_reset] == ["system", "user"]
    assert "context" not in captured.err  # nothing dropped


@pytest.mark.slow  # a subprocess or a training run: make test, not test-fast
def test_chat_says_once_that_old_exchanges_are_dropped(folder, monkeypatch, capsys):
    lines = "".join(f"message {i}: {'z' * 60}\n" for i in range(5)) + "/exit\nnot read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", str(folder), "--max-new-tokens", "90", "--system", "Be brief."]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("the oldest exchanges are dropped") == 1
    assert captured.out.count("you> ") == 6


def _cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "ftlib.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow  # a subprocess or a training run: make test, not test-fast
def test_chat_through_a_pipe_exits_0_at_end_of_input():
    result = _cli("chat", "tiny-llama", "--max-new-tokens", "4", stdin="hello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("you> ") == 2 and "Traceback" not in result.stderr


@pytest.mark.slow  # a subprocess or a training run: make test, not test-fast
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pseudo-terminal")
def test_chat_in_a_terminal_streams_replies_and_exits(folder):
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "ftlib.cli", "chat", str(folder), "--max-new-tokens", "6"],
                               stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)

    def read_until(marker: bytes, seen: bytes = b"") -> bytes:
        deadline = time.monotonic() + 60
        while marker not in seen and time.monotonic() < deadline:
            if select.select([leader], [], [], 1)[0]:
                seen += os.read(leader, 4096)
        assert marker in seen, seen
        return seen

    try:
        read_until(b"you> ")
        os.write(leader, "Salut é\r".encode())
        shown = read_until(b"you> ", read_until(b"Salut"))  # the echo, then the reply, then a prompt again
        os.write(leader, b"/exit\r")
        assert process.wait(timeout=30) == 0
        assert shown.count(b"you> ") >= 1
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)


@pytest.mark.parametrize("make, message", [
    (lambda d: "no-such-model", "'no-such-model': no such folder, and not a registered generative model"),
    (lambda d: "minilm-l6", "is a text model, not a generative one"),
    (lambda d: str(d), "is neither a run folder of `ftlib finetune` (metrics.json) nor a model folder"),
    (lambda d: _write(d, {"task": "text", "model": "minilm-l6"}), "is a run of a text classifier (minilm-l6)"),
    (lambda d: _write(d, {"task": "text generation", "model": "tiny-llama", "technique": "full"}),
     "holds no weights to generate with"),
])
def test_a_bad_source_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    assert main(["generate", make(tmp_path), "hello"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def _write(folder, metrics):
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return str(folder)


def test_bad_options_and_no_prompt_fail_before_loading(capsys):
    for args, message in [(["--top-p", "0"], "--top-p: expected a number in (0, 1]"),
                          (["--temperature", "-1"], "--temperature: expected a number >= 0"),
                          (["--max-new-tokens", "0"], "--max-new-tokens: expected a positive integer")]:
        with pytest.raises(SystemExit) as exit_:
            main(["generate", "tiny-llama", "hi", *args])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert main(["generate", "tiny-llama"]) == 2
    assert "Nothing to generate" in capsys.readouterr().err


@pytest.mark.integration
def test_smollm2_streams_the_tokens_of_model_generate_and_whole_characters():
    model, tokenizer, description = inference.load_for_generation("smollm2-135m", dtype=torch.float32)
    ids = inference.prompt_tokens(tokenizer, sft.chat_messages("What is the capital of France?"))
    eot = sft.end_of_turn_id(tokenizer)
    mine = list(inference.generate_tokens(model, ids, max_new_tokens=30, eos_token_id=eot))
    out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=30, do_sample=False, eos_token_id=eot,
                         pad_token_id=tokenizer.pad_token_id)
    assert mine == out[0, len(ids):].tolist()
    assert "Paris" in inference.reply(model, tokenizer, "What is the capital of France?", max_new_tokens=30)
    text = "Un café, s'il vous plaît 😀 – merci"
    token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = list(inference.detokenize(tokenizer, token_ids))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
