"""`ftlib finetune` on instruction data (answers that are text), end to end on the tiny random Llama."""
import json

import pytest
import torch

from ftlib.cli import main
from ftlib.pipeline import FinetuneConfig, finetune

# Short prompt/completion pairs: distinct prompts, so the grouped split keeps every one.
PAIRS = [{"prompt": f"Name the colour number {i}.", "completion": f"Colour {i} is {c}."}
         for i, c in enumerate(["red", "green", "blue", "amber", "teal", "pink", "grey", "gold"] * 3)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_instruction_data_makes_a_generative_run(tmp_path):
    data = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    cfg = FinetuneConfig(model="tiny-llama", data=str(data)).resolved()
    assert (cfg.task, cfg.technique) == ("text generation", "lora")
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\ngood film,pos\nbad film,neg\n", encoding="utf-8")
    with pytest.raises(ValueError, match="needs instruction data"):
        FinetuneConfig(model="tiny-llama", data=str(table)).resolved()
    with pytest.raises(ValueError, match="is instruction data"):
        FinetuneConfig(model="minilm-l6", data=str(data)).resolved()  # a classifier cannot learn to write
    assert FinetuneConfig(data=str(data)).resolved().model == "smollm2-135m"  # the data implies the job


@pytest.mark.slow
def test_finetune_on_prompt_completion_pairs_measures_what_the_model_writes(tmp_path):
    data = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    before = data.read_bytes()
    lines = []
    out = tmp_path / "run"
    finetune(model="tiny-llama", data=str(data), train_size=12, val_size=4, test_size=6, batch_size=4,
             max_length=384, out=str(out), progress=False, log=lines.append, merge=True)
    assert data.read_bytes() == before  # the user's file is never changed
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["data_format"] == "prompt-completion"
    for scores in (saved["zero_shot"], saved["test"]):
        assert {"rouge1", "rouge2", "rougeL", "rougeL_95ci", "predicted_words", "reference_words"} <= set(scores)
        assert 0 <= scores["rougeL_95ci"][0] <= scores["rougeL"] <= scores["rougeL_95ci"][1] <= 1
        assert scores["num_examples"] == 6
    low, high = saved["test"]["rougeL_gain_95ci"]
    assert low <= saved["test"]["rougeL_gain"] <= high
    examples = json.loads((out / "examples.json").read_text())
    assert len(examples) == 6
    assert {"prompt", "reference", "zero_shot", "fine_tuned", "rougeL_zero_shot", "rougeL_fine_tuned"} <= set(examples[0])
    assert {e["reference"] for e in examples} <= {p["completion"] for p in PAIRS}
    assert any(line.startswith("[7/7]") and "ROUGE-L gain over zero-shot" in line for line in lines)
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "merged" / "config.json").exists()
    assert not (out / "confusion_matrix.png").exists()  # text answers have no classes


@pytest.mark.slow
def test_the_merged_model_runs_in_transformers_pipeline_alone_with_ftlibs_greedy_text(tmp_path):
    """What a user takes away: transformers.pipeline on the merged folder, the chat template applied."""
    from transformers import pipeline

    from ftlib.generative import sft
    from ftlib.models import load_causal_lm

    model, tokenizer = load_causal_lm("tiny-llama")
    torch.manual_seed(0)
    lora = sft.add_lora(model, r=4, alpha=8)
    for name, p in lora.named_parameters():  # a non-zero adapter, so merging changes the weights
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    messages = sft.chat_messages("Write a headline about rain.")
    with_adapter = sft.generate(lora, tokenizer, [messages], max_new_tokens=12)[0]
    merged = sft.merge_lora(lora)
    sft.save_for_pipeline(merged, tokenizer, tmp_path / "merged")
    generator = pipeline("text-generation", model=str(tmp_path / "merged"), device="cpu")
    reply = generator(messages, max_new_tokens=12)[0]["generated_text"][-1]
    assert reply["role"] == "assistant"
    assert reply["content"] == with_adapter
    with pytest.raises(TypeError, match="plain model"):
        sft.save_for_pipeline(sft.add_lora(load_causal_lm("tiny-llama")[0], r=2, alpha=4), tokenizer, tmp_path / "x")


@pytest.mark.slow
def test_cli_finetune_on_conversations_skips_what_does_not_fit_and_counts_it(tmp_path, capsys):
    long_reply = " ".join(["word"] * 400)
    rows = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."},
                          {"role": "user", "content": f"And {i} again?"},
                          {"role": "assistant", "content": long_reply if i < 2 else f"Again {i}."}]}
            for i in range(16)]
    data = _jsonl(tmp_path / "chats.jsonl", rows)
    code = main(["finetune", "--model", "tiny-llama", "--data", str(data), "--train-size", "10", "--val-size", "3",
                 "--test-size", "3", "--max-length", "256", "--quiet", "--out", str(tmp_path / "run")])
    assert code == 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["data_format"] == "messages"
    skipped = saved["skipped_too_long"]
    assert saved["train_size"] + saved["val_size"] + skipped == 13
    out = capsys.readouterr().out
    assert "Zero-shot" in out and "ROUGE-L" in out
