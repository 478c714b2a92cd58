import csv

import pytest

from ftlib.cli import main
from ftlib.compare import CompareConfig, compare, estimate_seconds, summarize, summary_markdown


def _cli_error(capsys, *args) -> str:
    """Run the CLI expecting a user error: exit status 2 and one line on stderr."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("args, message", [
    (["--techniques", "magic"], "invalid choice: 'magic'"),
    (["--train-sizes", "0"], "--train-sizes: expected a positive integer"),
    (["--task", "image", "--techniques", "full", "lora"], "need a text (transformer) model"),
    (["--alpha", "0.1", "--techniques", "full"], "--alpha applies to the 'l2sp' technique, which is not being run"),
    (["--alpha", "-1", "--techniques", "l2sp"], "--alpha: expected a number >= 0"),
    (["--task", "image", "--model", "tiny-cnn", "--techniques", "scratch"], "has no pretrained weights"),
    (["--model", "tiny-cnn"], "is an image model"),
    (["--techniques", "full", "full"], "--techniques must name each technique once; got ['full', 'full']."),
    (["--lr", "0"], "--lr: expected a number > 0"),
])
def test_compare_bad_options_one_line_exit_2(capsys, args, message):
    assert message in _cli_error(capsys, "compare", *args)


def test_finetune_technique_flags_are_checked(capsys):
    err = _cli_error(capsys, "finetune", "--technique", "full", "--lora-rank", "4")
    assert "--lora-rank applies to the 'lora' technique" in err
    err = _cli_error(capsys, "finetune", "--technique", "magic")
    assert "invalid choice: 'magic'" in err and "lp-ft" in err


def test_compare_dry_run_prints_grid_and_estimate(capsys):
    assert main(["compare", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "24 runs" in out and "full, feature-extraction, lp-ft, lora" in out and "min" in out
    assert main(["compare", "--quick", "--dry-run"]) == 0
    assert "4 runs" in capsys.readouterr().out


def test_default_and_quick_estimates_fit_their_budgets():
    # Idle-machine estimates: the defaults within about 15 minutes, --quick within about 2.
    for task in ("text", "image"):
        assert estimate_seconds(CompareConfig(task=task)) < 15 * 60
        assert estimate_seconds(CompareConfig(task=task, quick=True)) < 2.5 * 60


def test_summarize_mean_std_and_time_ratio():
    rows = [
        {"technique": "full", "train_size": 100, "seed": s, "test_accuracy": a, "val_accuracy": a,
         "train_seconds": 10, "epoch_seconds": 4.0, "trainable_parameters": 100, "total_parameters": 100}
        for s, a in [(0, 0.6), (1, 0.8)]
    ] + [
        {"technique": "lora", "train_size": 100, "seed": s, "test_accuracy": a, "val_accuracy": a,
         "train_seconds": 5, "epoch_seconds": 3.0, "trainable_parameters": 5, "total_parameters": 100}
        for s, a in [(0, 0.7), (1, 0.7)]
    ]
    summary = summarize(rows)
    full, lora = summary
    assert full["test_accuracy_mean"] == pytest.approx(0.7)
    assert full["test_accuracy_std"] == pytest.approx(0.1414, abs=1e-4)  # sample std over seeds
    assert lora["epoch_time_ratio_to_full"] == pytest.approx(0.75)
    assert lora["trainable_share"] == pytest.approx(0.05)
    table = summary_markdown(summary)
    assert "| lora | 100 | 2 | 0.700 ± 0.000 |" in table and "0.75x" in table and "5 (5.00%)" in table
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


@pytest.mark.slow
def test_compare_writes_tables_and_plots(tmp_path, tokenizer):
    lines = []
    rows = compare(model="tiny-bert", techniques=["full", "feature-extraction"], train_sizes=[16, 32], seeds=[0, 1],
                   val_size=16, test_size=16, epochs=1, lr=1e-3, out=str(tmp_path), log=lines.append)
    assert len(rows) == 8
    assert "8 runs" in lines[0] and "about" in lines[0]
    assert any("left" in line for line in lines[1:])  # progress with a time estimate
    with open(tmp_path / "results.csv") as f:
        stored = list(csv.DictReader(f))
    assert len(stored) == 8 and {r["technique"] for r in stored} == {"full", "feature-extraction"}
    for name in ("summary.md", "summary.csv", "accuracy_vs_train_size.png", "time_per_technique.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "±" in (tmp_path / "summary.md").read_text()
    assert list((tmp_path / "feature_cache").glob("*.npz"))


def test_compare_writes_and_prints_only_on_the_main_process(tmp_path, monkeypatch):
    # Under `accelerate launch` every process runs compare; rank 1 must leave the files to rank 0.
    monkeypatch.setenv("RANK", "1")
    lines, out = [], tmp_path / "run"
    rows = compare(model="tiny-bert", techniques=["full"], train_sizes=[16], seeds=[0], val_size=16, test_size=16,
                   epochs=1, lr=1e-3, out=str(out), log=lines.append)
    assert len(rows) == 1 and rows[0]["technique"] == "full"
    assert lines == [] and not out.exists()
