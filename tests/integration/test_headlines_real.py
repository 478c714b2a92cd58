"""The real SmolLM2-135M-Instruct writing BBC headlines, offline (marked integration; about two minutes).

One short fine-tune is shared by the module: it must raise ROUGE-L on held-out articles, and
the merged model it saves must run in ``transformers.pipeline`` with no ftlib code and write
what ftlib's greedy decoding writes with the same weights.
"""
import json
import os
import subprocess
import sys

import pytest

from ftlib.pipeline import finetune

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def headline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("headlines")
    metrics = finetune(model="smollm2-135m", dataset="bbc-headlines", train_size=96, val_size=8, test_size=24,
                       out=str(out), progress=False, log=lambda _: None, merge=True)
    return out, metrics


def test_a_short_headline_fine_tune_raises_rouge_l_on_held_out_articles(headline_run):
    out, metrics = headline_run
    zero_shot, tested = metrics["zero_shot"], metrics["test"]
    low, _ = tested["rougeL_gain_95ci"]
    assert low > 0, (zero_shot["rougeL"], tested["rougeL"], tested["rougeL_gain_95ci"])
    # The instruct model writes sentences; fine-tuned, it writes headlines of about the references' length.
    assert abs(tested["predicted_words"] - tested["reference_words"]) < \
        abs(zero_shot["predicted_words"] - zero_shot["reference_words"])
    examples = json.loads((out / "examples.json").read_text())
    assert len(examples) == 24 and all(e["fine_tuned"].strip() for e in examples)


def test_the_merged_model_runs_in_transformers_pipeline_without_ftlib(headline_run):
    out, _ = headline_run
    examples = json.loads((out / "examples.json").read_text())[:3]
    messages = [[{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": e["prompt"]}] for e in examples]
    script = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        "messages = json.loads(sys.stdin.read())\n"
        f"generator = pipeline('text-generation', model={str(out / 'merged')!r}, device='cpu')\n"
        "replies = [generator(m, max_new_tokens=24)[0]['generated_text'][-1]['content'] for m in messages]\n"
        "assert not any(name == 'ftlib' or name.startswith('ftlib.') for name in sys.modules)\n"
        "print(json.dumps(replies))\n")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(messages), capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=out, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    replies = json.loads(done.stdout.strip().splitlines()[-1])

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftlib.generative import sft

    model = AutoModelForCausalLM.from_pretrained(out / "merged")
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    ours = [sft.generate(model, tokenizer, [m], max_new_tokens=24, batch_size=1)[0] for m in messages]
    assert replies == ours
    assert all(r.strip() for r in replies)
