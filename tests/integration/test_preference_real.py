"""The real SmolLM2-135M-Instruct tuned by DPO on self-play headline pairs, offline (marked integration; two minutes).

The pairs: each article's real headline (chosen) against the headline the model itself writes
(rejected), made once and cached in a temporary ``FTLIB_CACHE``. A short run must raise how
often the real headline is the more likely one on held-out articles, and the implicit
rewards must end with a positive margin.
"""
import json

import pytest

from ftlib.pipeline import finetune

pytestmark = pytest.mark.integration


def test_a_short_dpo_run_raises_held_out_preference_accuracy(tmp_path, monkeypatch):
    from ftlib.paths import cache_dir

    real = cache_dir()  # the converted weights live there: linked into the temporary cache, not converted again
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    for entry in real.glob("smollm2-135m-*"):
        (tmp_path / "cache" / entry.name).symlink_to(entry)
    lines = []
    finetune(model="smollm2-135m", dataset="bbc-headlines", technique="dpo", train_size=32, val_size=8,
             test_size=24, out=str(tmp_path / "run"), progress=False, log=lines.append)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    before, after = saved["before"], saved["test"]
    assert after["likelihood_accuracy"] > before["likelihood_accuracy"], (before, after)
    assert after["margin"] > 0 and after["accuracy"] > 0.5, after
    assert len(list((tmp_path / "cache" / "pairs").glob("bbc-headlines-*/made_by.json"))) == 1
    assert any(line.startswith("[7/7] After") for line in lines)
