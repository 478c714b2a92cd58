"""`make bench` runs bench/run_all.py: every benchmark it names must exist and be runnable."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import run_all  # noqa: E402


def test_make_bench_runs_an_existing_script():
    target = re.search(r"^bench:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    scripts = re.findall(r"(\S+\.py)", target)
    assert scripts and all((ROOT / s).is_file() for s in scripts), target


def test_every_benchmark_script_exists():
    for bench in run_all.BENCHES:
        script = next(part for part in bench.command if part.endswith((".py", ".sh")))
        assert (ROOT / script).is_file(), f"{bench.name}: {script} does not exist"
        assert bench.minutes > 0 and bench.figures


def test_list_prints_the_plan_and_the_estimate_and_runs_nothing():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--list"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    total = sum(b.minutes for b in run_all.BENCHES)
    assert f"about {total:.0f} min" in out.splitlines()[0]
    for bench in run_all.BENCHES:
        assert bench.name in out and run_all._shown(bench) in out


def test_unknown_benchmark_is_a_usage_error():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "nope"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "unknown benchmark(s) nope" in r.stderr


def test_a_benchmark_that_cannot_run_here_is_reported_skipped_not_ok():
    """The DPO cross-check needs TRL, which the course environment lacks: run_all listed it "ok"."""
    if importlib.util.find_spec("trl") is not None:
        pytest.skip("TRL is installed here: the cross-check would run")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "llm" / "dpo_vs_trl.py")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == run_all.SKIPPED and r.stdout.startswith("SKIPPED: TRL is not installed"), r
    assert run_all.result(r.returncode) == "skipped (see its output)"
    assert run_all.result(0) == "ok" and run_all.result(1) == "FAILED (1)"


def test_headline_style_counts_quoted_phrases_not_apostrophes():
    """SimPO's seed-0 headlines quoted a phrase in 91% of them (2026-12-07), the real ones in 16%:
    ROUGE-L said they got worse, not how."""
    import preference

    quoted = ["Rank 'set to sell off film unit'", "Japan's beer market 'on the rise'", "'Japan's beer' sales",
              'Minister says "no" to the plan', "\u2018Quoted\u2019 here"]
    plain = ["Peugeot deal boosts Mitsubishi", "Japan's beer market grows", "Mitsubishi 's new deal",
             "workers' pay rises", "Shares fall 5%"]
    assert [bool(preference.QUOTED.search(t)) for t in quoted] == [True] * len(quoted)
    assert [bool(preference.QUOTED.search(t)) for t in plain] == [False] * len(plain)
    style = preference.headline_style(quoted[:1] + plain[:3])
    assert style["quoted_share"] == 0.25
    # Words as ROUGE counts them (ftlib.generative.metrics.words), so they match the job's own figure.
    from ftlib.generative.metrics import words
    assert style["words"] == sum(len(words(t)) for t in quoted[:1] + plain[:3]) / 4
    with pytest.raises(ValueError, match="at least one headline"):
        preference.headline_style([])


def test_preference_settings_tries_only_the_jobs_settings_and_says_what_it_would_run(tmp_path):
    """bench/preference_settings.py: each --try is a setting of the preference job on one SFT run."""
    import preference_settings as ps

    assert ps.setting("--lr 5e-5 --gamma 1", "simpo") == ["--lr", "5e-5", "--gamma", "1"]
    with pytest.raises(ValueError, match="--gamma is not a setting to try for dpo"):
        ps.setting("--gamma 1", "dpo")  # DPO has no target margin
    with pytest.raises(ValueError, match="--seed is not a setting"):
        ps.setting("--seed 3", "dpo")  # another seed is another experiment, not a setting
    with pytest.raises(ValueError, match="expected flags and their values"):
        ps.setting("--lr", "dpo")
    script = [sys.executable, str(ROOT / "bench" / "preference_settings.py")]
    r = subprocess.run([*script, "--technique", "dpo", "--try", "--gamma 1", "--dry-run"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--gamma is not a setting to try for dpo" in r.stderr
    r = subprocess.run([*script, "--technique", "dpo", "--sft", str(tmp_path), "--dry-run"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no LoRA run there" in r.stderr
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    r = subprocess.run([*script, "--technique", "simpo", "--sft", str(tmp_path), "--try", "--lr 5e-5 --beta 2.5",
                        "--dry-run", "--keep", str(tmp_path / "runs")], capture_output=True, text=True, timeout=60,
                       check=True)
    lines = r.stdout.splitlines()
    base = f"ftlib finetune --model smollm2-135m --dataset bbc-headlines --seed 0 --technique simpo --from {tmp_path}"
    assert lines == [f"{base} --out {tmp_path / 'runs' / 'simpo-0'}",  # the job's defaults first
                     f"{base} --lr 5e-5 --beta 2.5 --out {tmp_path / 'runs' / 'simpo-1'}"], lines
    assert not (tmp_path / "runs").exists()  # a dry run makes nothing


def test_preference_settings_table_shows_every_figure_of_a_row():
    import preference_settings as ps

    row = {"setting": "--lr 5e-5", "rougeL_before": 0.2525, "rougeL": 0.2431, "likelihood_accuracy_before": 0.03,
           "likelihood_accuracy": 0.1, "words": 6.4, "quoted_share": 0.5, "training_seconds": 330.4,
           "peak_memory_mb": 1290.2}
    table = ps.table([row, {**row, "setting": "dpo", "accuracy": 0.805, "margin": 0.252}])
    assert "| --lr 5e-5 | 0.2525 -> 0.2431 | 3.0% -> 10.0% |  | 6.4, 50% | 330 s | 1,290 MB |" in table, table
    assert "| dpo | 0.2525 -> 0.2431 | 3.0% -> 10.0% | 0.805, +0.252 | 6.4, 50% | 330 s | 1,290 MB |" in table, table
