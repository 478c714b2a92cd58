"""`ftlib finetune --technique dpo` (and simpo) end to end on the tiny random Llama."""
import json

import pytest

from ftlib.config import PREFERENCE, FinetuneConfig
from ftlib.pipeline import finetune

TOPICS = ["rain", "rates", "phones", "football", "films", "trains", "schools", "banks", "music", "farms", "roads",
          "ships", "shops", "taxes", "votes", "games"]
PAIRS = [{"prompt": f"Headline about {t}?", "chosen": f"{t.title()} news today", "rejected": f"Something about {t}."}
         for t in TOPICS]
CHATS = [{"prompt": f"Headline about {t}?", "completion": f"{t.title()} news today"} for t in TOPICS]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_preference_settings_and_their_errors(tmp_path):
    pairs = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    chats = _jsonl(tmp_path / "chats.jsonl", CHATS)
    cfg = FinetuneConfig(model="tiny-llama", data=str(pairs)).resolved()
    assert (cfg.task, cfg.technique, cfg.batch_size) == ("text generation", "dpo", 1)  # pairs imply DPO
    # fp32 by default (bf16 autocast cost 1.2 GB more on an avx512_bf16 CPU); asked for, bf16 is kept.
    assert cfg.precision == PREFERENCE["precision"] == "fp32"
    assert FinetuneConfig(model="tiny-llama", data=str(pairs), precision="bf16").resolved().precision == "bf16"
    assert FinetuneConfig(model="tiny-llama", dataset="bbc-headlines").resolved().precision == "auto"  # SFT: as before
    headlines = FinetuneConfig(model="tiny-llama", dataset="bbc-headlines", technique="dpo").resolved()
    sft = FinetuneConfig(model="tiny-llama", dataset="bbc-headlines").resolved()
    assert headlines.train_size < sft.train_size and headlines.test_size == sft.test_size  # the same test articles
    assert FinetuneConfig(model="tiny-llama", data=str(chats), technique="simpo").resolved().technique == "simpo"
    with pytest.raises(ValueError, match="needs preference pairs"):
        FinetuneConfig(model="tiny-llama", dataset="rotten-tomatoes", technique="dpo").resolved()
    with pytest.raises(ValueError, match="holds preference pairs"):
        FinetuneConfig(model="tiny-llama", data=str(pairs), technique="lora").resolved()
    with pytest.raises(ValueError, match="applies to preference tuning"):
        FinetuneConfig(model="tiny-llama", dataset="bbc-headlines", from_run=str(tmp_path)).resolved()
    with pytest.raises(ValueError, match="generative LoRA run"):
        FinetuneConfig(model="tiny-llama", data=str(pairs), from_run=str(tmp_path)).resolved()
    with pytest.raises(ValueError, match="technique must be one of"):
        FinetuneConfig(model="tiny-llama", data=str(pairs), technique="ppo").resolved()


@pytest.mark.slow
def test_dpo_on_pairs_reports_before_and_after_and_the_reward_curves(tmp_path, cache):
    pairs = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    lines = []
    out = tmp_path / "run"
    metrics = finetune(model="tiny-llama", data=str(pairs), val_size=3, test_size=3, epochs=2, lr=5e-3,
                       max_length=200, out=str(out), progress=False, log=lines.append)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["method"] == "dpo" and saved["beta"] == 0.1
    assert saved["sft_weight"] == PREFERENCE["sft_weight"] == 1.0  # the job's default: DPO with the SFT term (RPO)
    assert any(line.startswith("[5/7]") and "RPO" in line and "recomputed" in line for line in lines)
    for key in ("likelihood_accuracy", "per_token_accuracy", "logprob_lead", "num_pairs"):
        assert key in saved["before"] and key in saved["test"]
    assert saved["pairs"] is None  # the user's own pairs: nothing made or cached
    assert {"chosen_reward", "rejected_reward", "margin", "accuracy"} <= set(saved["test"])
    assert len(saved["steps"]) == 2 * saved["train_size"]  # one pair per step, two epochs
    assert saved["steps"][0]["margin"] == pytest.approx(0.0, abs=1e-4)  # the policy starts as its reference
    assert (out / "preference_curves.png").exists() and (out / "adapter" / "adapter_config.json").exists()
    assert any(line.startswith("[7/7] After") and "implicit rewards" in line for line in lines)
    assert metrics["out"] == str(out)


@pytest.mark.slow
def test_self_play_pairs_from_instruction_data_are_made_once_and_cached(tmp_path, cache, monkeypatch):
    from ftlib.generative import sft

    # The tiny random Llama writes only newlines, which make no pair: give it a wordy reply per
    # prompt (the real model's self-play is in tests/integration).
    writes = []

    def wordy(model, tokenizer, prompts, max_new_tokens=16, *, batch_size=8):
        writes.append(len(prompts))
        return [f"Here is something about {p[-1]['content'].split()[-1].rstrip('?')}." for p in prompts]

    monkeypatch.setattr(sft, "generate", wordy)
    chats = _jsonl(tmp_path / "chats.jsonl", CHATS)
    options = dict(model="tiny-llama", data=str(chats), technique="simpo", val_size=3, test_size=3, epochs=1,
                   max_length=200, precision="fp32", progress=False)
    first, second = [], []
    finetune(**options, out=str(tmp_path / "a"), log=first.append)
    made = list((cache / "pairs").glob("chats-*/made_by.json"))
    assert len(made) == 1
    record = json.loads(made[0].read_text())
    assert record["model"] == "tiny-llama" and record["seed"] == 0 and len(record["data_sha256"]) == 64
    rows = [json.loads(line) for line in (made[0].parent / "train.jsonl").read_text().splitlines()]
    assert rows and {"prompt", "chosen", "rejected"} == set(rows[0])  # TRL's conversational preference format
    assert all(r["chosen"][0]["content"] in {c["completion"] for c in CHATS} for r in rows)
    assert any("making the pairs" in line for line in first)
    finetune(**options, out=str(tmp_path / "b"), log=second.append)
    assert any("cached in" in line for line in second) and not any("making the pairs" in line for line in second)
    assert writes[:3] == [10, 3, 3]  # the pairs of the first run: train, validation, test; the second made none
    saved = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert saved["method"] == "simpo" and "rouge" in saved["test"] and "rougeL" in saved["test"]["rouge"]
    assert (tmp_path / "b" / "examples.json").exists()
    assert saved["pairs"] == str(made[0].parent)  # where the pairs are, for a user (and bench/preference.py)
    # The starting model scored on those held-out pairs by score_pairs is the job's "before".
    from ftlib.data.pairs import load_pairs
    from ftlib.models import load_causal_lm
    from ftlib.pipeline_preference import score_pairs
    from ftlib.train import set_seed

    set_seed(0)  # the job's seed, before its random tiny model is built
    model, tokenizer = load_causal_lm("tiny-llama")
    start = score_pairs(model, tokenizer, load_pairs(made[0].parent / "test.jsonl"), max_length=200)
    for key in ("likelihood_accuracy", "per_token_accuracy", "logprob_lead", "num_pairs"):
        assert start[key] == pytest.approx(saved["before"][key], abs=1e-5), key


@pytest.mark.slow
def test_dpo_from_an_sft_run_starts_from_its_weights(tmp_path, cache):
    chats = _jsonl(tmp_path / "chats.jsonl", CHATS)
    pairs = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    finetune(model="tiny-llama", data=str(chats), val_size=3, test_size=3, max_length=200, lr=5e-3,
             out=str(tmp_path / "sft"), progress=False, log=lambda _: None)
    lines = []
    finetune(model="tiny-llama", data=str(pairs), from_run=str(tmp_path / "sft"), val_size=3, test_size=3,
             max_length=200, out=str(tmp_path / "dpo"), progress=False, log=lines.append)
    assert any("starting from" in line and "adapter folded into the weights" in line for line in lines)
    saved = json.loads((tmp_path / "dpo" / "metrics.json").read_text())
    assert saved["from_run"] == str(tmp_path / "sft")


@pytest.mark.slow
def test_cli_dpo_takes_beta_and_from(tmp_path, cache, capsys):
    from ftlib.cli import main

    pairs = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    code = main(["finetune", "--model", "tiny-llama", "--data", str(pairs), "--beta", "0.3", "--val-size", "3",
                 "--test-size", "3", "--max-length", "200", "--quiet", "--out", str(tmp_path / "run")])
    assert code == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["beta"] == 0.3
    assert "After, on the 3 held-out pairs" in capsys.readouterr().out
    code = main(["finetune", "--model", "tiny-llama", "--data", str(pairs), "--gamma", "1", "--quiet",
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "--gamma applies to the 'simpo' technique" in capsys.readouterr().err
    # SimPO's own beta and target margin, for a search of its settings (bench/preference_settings.py).
    code = main(["finetune", "--model", "tiny-llama", "--data", str(pairs), "--technique", "simpo", "--sft-weight", "0",
                 "--beta", "2.5", "--gamma", "1.25", "--val-size", "3", "--test-size", "3", "--max-length", "200",
                 "--quiet", "--out", str(tmp_path / "s")])
    saved = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert code == 0 and (saved["sft_weight"], saved["beta"], saved["gamma"]) == (0.0, 2.5, 1.25)
    assert "SimPO, beta 2.5, margin 1.25" in capsys.readouterr().out
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--model", "tiny-llama", "--data", str(pairs), "--sft-weight", "-1", "--quiet"])
    assert exit_.value.code == 2 and "expected a number >= 0, got '-1'" in capsys.readouterr().err
    chats = _jsonl(tmp_path / "chats.jsonl", CHATS)
    code = main(["finetune", "--model", "tiny-llama", "--data", str(chats), "--technique", "lora", "--sft-weight", "1",
                 "--quiet", "--out", str(tmp_path / "z")])
    assert code == 2 and "--sft-weight applies to the 'dpo' or 'simpo' technique" in capsys.readouterr().err
    code = main(["finetune", "--model", "tiny-llama", "--data", str(pairs), "--from", str(tmp_path / "nowhere"),
                 "--quiet", "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == 2 and "must be the folder of a generative LoRA run" in err and len(err.strip().splitlines()) == 1
