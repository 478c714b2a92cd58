"""`ftlib finetune` with a generative model, end to end on the tiny random Llama (seconds)."""
import json

import pytest
import torch

from ftlib.cli import main
from ftlib.pipeline import FinetuneConfig, finetune


def test_a_generative_model_implies_its_task_and_lora(tmp_path):
    cfg = FinetuneConfig(model="tiny-llama").resolved()
    assert (cfg.task, cfg.technique, cfg.dataset, cfg.epochs) == ("text generation", "lora", "rotten-tomatoes", 1)
    assert FinetuneConfig(model="tiny-llama", technique="full").resolved().lr == 2e-5
    with pytest.raises(ValueError, match=r"technique must be one of \['lora', 'full', 'dpo', 'simpo'\]"):
        FinetuneConfig(model="tiny-llama", technique="l2sp").resolved()
    with pytest.raises(ValueError, match="no instruction framing"):
        FinetuneConfig(model="tiny-llama", dataset="fashion-mnist").resolved()
    assert FinetuneConfig().resolved().technique == "full"  # the classifier job is unchanged
    # BBC News's grouped split leaves 422 articles for testing: the job's 500 would not fit
    assert FinetuneConfig(model="tiny-llama", dataset="bbc-news").resolved().test_size == 400
    assert FinetuneConfig(model="tiny-llama", test_size=2000).resolved().test_size == 2000


@pytest.mark.slow
def test_finetune_writes_metrics_generations_curves_and_the_adapter(tmp_path):
    lines = []
    metrics = finetune(model="tiny-llama", train_size=8, val_size=4, test_size=6, batch_size=4, max_length=384,
                       out=str(tmp_path), progress=False, log=lines.append)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("zero_shot", "test", "trainable_parameters", "precision", "history", "peak_memory_mb"):
        assert key in saved
    assert saved["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    assert any("every linear layer of the 2 blocks" in line for line in lines)  # the model's own depth
    assert saved["precision"] in ("bf16", "fp32") and 0 < saved["trainable_parameters"] < saved["total_parameters"]
    assert saved["test"]["num_examples"] == saved["zero_shot"]["num_examples"] == 6
    generations = json.loads((tmp_path / "generations.json").read_text())
    assert generations and {"prompt", "answer", "before", "after"} <= set(generations[0])
    forgetting = saved["forgetting"]  # general prompts before and after: what fine-tuning cost
    assert {"prompts", "replies_before", "replies_after", "unchanged", "nll_before", "nll_after",
            "perplexity_before", "perplexity_after"} <= set(forgetting)
    assert 0 <= forgetting["unchanged"] <= 1 and forgetting["nll_before"] > 0 and forgetting["nll_after"] > 0
    assert len(forgetting["replies_before"]) == len(forgetting["replies_after"]) == len(forgetting["prompts"])
    assert any(line.strip().startswith("general prompts:") for line in lines)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "learning_curves.png").exists()
    assert metrics["out"] == str(tmp_path)


@pytest.mark.slow
def test_cli_finetune_full_and_fp32(tmp_path, capsys):
    code = main(["finetune", "--model", "tiny-llama", "--technique", "full", "--precision", "fp32", "--train-size",
                 "4", "--val-size", "2", "--test-size", "4", "--max-length", "384", "--quiet", "--out", str(tmp_path)])
    assert code == 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["precision"] == "fp32" and saved["trainable_parameters"] == saved["total_parameters"]
    assert not (tmp_path / "adapter").exists()
    assert "Zero-shot" in capsys.readouterr().out


@pytest.mark.parametrize("flags, capability, expected", [
    (True, "AVX512", "bf16"),  # AVX-512 BF16 or AMX
    (False, "AVX512", "fp32"),  # AVX-512 without BF16: bf16 emulated
    (True, "AVX2", "fp32"),  # PyTorch kept to AVX2 kernels
])
@pytest.mark.slow
def test_the_generative_job_takes_its_precision_and_autocast_from_ftlib_devices(tmp_path, monkeypatch, flags,
                                                                              capability, expected):
    """One precision decision in the library: if pipeline_llm or sft decided on their own, this fails."""
    import torch

    from ftlib import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda cpuinfo="/proc/cpuinfo": flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(devices, "default_device", lambda: torch.device("cpu"))  # the CPU's decision, GPU or not
    assert devices.resolve_precision("auto", "cpu") == expected
    asked, autocast = [], devices.autocast
    monkeypatch.setattr(devices, "autocast", lambda precision, device: asked.append(precision) or autocast(precision,
                                                                                                        device))
    # Full fine-tuning keeps fp32 weights, so bf16 is an autocast around every forward pass.
    finetune(model="tiny-llama", technique="full", train_size=4, val_size=2, test_size=4, batch_size=4,
             max_length=384, out=str(tmp_path), progress=False, log=lambda _: None)
    assert json.loads((tmp_path / "metrics.json").read_text())["precision"] == expected
    assert asked and set(asked) == {expected, "fp32"}  # fit's own steps stay fp32: SFTModel autocasts inside


@pytest.mark.parametrize("bf16_gpu, expected", [(True, "bf16"), (False, "fp32")])
def test_the_generative_job_resolves_auto_for_the_gpu_it_trains_on(monkeypatch, bf16_gpu, expected):
    """fit trains on a GPU where there is one: auto must be decided there, not from the CPU's flags."""
    import torch

    from ftlib import devices, pipeline_llm

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda cpuinfo="/proc/cpuinfo": not bf16_gpu)
    monkeypatch.setattr(devices, "default_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_gpu)
    # An older GPU (fp16 only) trains in fp32: bf16-stored weights have no fp16 counterpart.
    assert pipeline_llm._precision("auto") == expected
    assert pipeline_llm._precision("fp32") == "fp32"
