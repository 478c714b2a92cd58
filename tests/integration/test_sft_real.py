"""The real SmolLM2-135M-Instruct, offline (marked integration; about a minute and a half).

The first load converts the package's 4-bit GGUF file into the ftlib cache (about 30 s,
``FTLIB_CACHE`` or ``~/.cache/ftlib``); one model is shared by the whole session.
"""
import pytest
import torch

from ftlib.generative import sft
from ftlib.data import load_dataset, split_dataset
from ftlib.models import cache_dir, count_parameters, load_causal_lm
from ftlib.optim import adamw
from ftlib.pipeline_llm import INSTRUCTIONS, instruction_prompts
from ftlib.train import evaluate, fit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def smollm2():
    return load_causal_lm("smollm2-135m")


def test_loads_offline_from_the_cache_in_transformers_format(smollm2):
    model, tokenizer = smollm2
    folder = next(cache_dir().glob("smollm2-135m-*"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert type(model).__name__ == "LlamaForCausalLM"
    assert count_parameters(model)[1] == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.eos_token == "<|im_end|>" == tokenizer.convert_ids_to_tokens(sft.end_of_turn_id(tokenizer))


def test_chat_template_round_trips_through_the_example(smollm2):
    _, tokenizer = smollm2
    prompt = "Is this movie review positive or negative?\n\nReview: a gorgeous, witty film."
    ex = sft.build_sft_example(tokenizer, prompt, "positive", max_length=256)
    rendered = tokenizer.apply_chat_template(sft.chat_messages(prompt, "positive"), tokenize=False)
    # Tokenizing prompt and answer apart gives the tokens of the whole rendered chat,
    # less the newline ChatML writes after the end of turn.
    whole = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert whole[:len(ex["input_ids"])] == ex["input_ids"] and tokenizer.decode(whole[len(ex["input_ids"]):]) == "\n"
    assert tokenizer.decode(ex["input_ids"]) == rendered.rstrip("\n")
    assert tokenizer.decode([t for t in ex["labels"] if t != -100]) == "positive<|im_end|>"


def test_greedy_generation_is_deterministic_and_stops(smollm2):
    model, tokenizer = smollm2
    first = sft.greedy_generate(model, tokenizer, "What is the capital of France?", max_new_tokens=20)
    assert "Paris" in first and "<|im_end|>" not in first and "capital of France?" not in first[:5]
    assert sft.greedy_generate(model, tokenizer, "What is the capital of France?", max_new_tokens=20) == first


def test_a_short_lora_run_lowers_the_loss_on_held_out_reviews(smollm2):
    model, tokenizer = smollm2
    state = {k: v.clone() for k, v in model.state_dict().items()}
    splits = split_dataset(load_dataset("rotten-tomatoes"), train_size=64, val_size=32, test_size=32, seed=0)
    answers = INSTRUCTIONS["rotten-tomatoes"]["answers"]

    def loader(split, shuffle):
        prompts = instruction_prompts("rotten-tomatoes", split.inputs)
        examples = [sft.build_sft_example(tokenizer, p, answers[y], 128) for p, y in zip(prompts, split.labels)]
        return sft.make_sft_loader(examples, tokenizer.pad_token_id, batch_size=8, shuffle=shuffle)

    lora = sft.add_lora(model, r=8, alpha=16)
    wrapped = sft.SFTModel(lora)
    held_out = loader(splits.val, False)
    before = evaluate(wrapped, held_out)["loss"]
    fit(wrapped, loader(splits.train, True), None, epochs=1, lr=3e-4,
        optimizer=adamw([p for p in lora.parameters() if p.requires_grad], lr=3e-4), progress=False)
    after = evaluate(wrapped, held_out)["loss"]
    assert after < 0.8 * before, (before, after)
    model = sft.merge_lora(lora)  # give the shared model back unchanged
    model.load_state_dict(state)
    with torch.no_grad():
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_bf16_weights_load_from_their_own_cache_equal_to_the_fp32_ones_rounded(smollm2):
    model, _ = smollm2
    bf16, _ = load_causal_lm("smollm2-135m", dtype=torch.bfloat16)
    assert (cache_dir() / "smollm2-135m-instruct-q4_1-dequantized-bf16" / "model.safetensors").exists()
    fp32 = model.state_dict()
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, fp32[k].to(torch.bfloat16))
               for k, v in bf16.state_dict().items())


def test_the_first_load_converts_in_a_child_so_the_caller_keeps_a_cached_load_peak(smollm2, tmp_path):
    # smollm2: the session's cache exists, to compare with (other tests change the model itself).
    # Converting in the caller left a learner's kernel at a 1.9 GB peak (Binder gives 2 GB);
    # a load from the cache peaks at about 0.47 GB.
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    # VmHWM, not ru_maxrss: the latter keeps the peak of the (large) test process it was forked from.
    code = ("import torch\nfrom ftlib.models import load_causal_lm\n"
            "model, _ = load_causal_lm('smollm2-135m', dtype=torch.bfloat16)\n"
            "print(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FTLIB_CACHE": str(tmp_path)},
                         capture_output=True, text=True, timeout=600, check=True).stdout
    assert json.loads(out.splitlines()[-1]) < 900
    name = "smollm2-135m-instruct-q4_1-dequantized/model.safetensors"
    written, cached = load_file(str(tmp_path / name)), load_file(str(cache_dir() / name))  # the session's cache
    assert sorted(written) == sorted(cached) and all(torch.equal(v, cached[k]) for k, v in written.items())
    assert (tmp_path / "smollm2-135m-instruct-q4_1-dequantized-bf16" / "model.safetensors").exists()
