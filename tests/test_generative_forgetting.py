"""ftlib.generative.forgetting, on a tiny random Llama (2 layers, byte-level ChatML tokenizer): seconds."""
import json
import math

import pytest
import torch
from torch.nn import functional as F

from ftlib.generative import sft
from ftlib.generative.forgetting import GENERAL_PROMPTS, general_replies, generative_forgetting, reply_nll
from ftlib.models import load_causal_lm, tiny_chat_tokenizer
from ftlib.optim import adamw
from ftlib.train import fit

IM_END = 2  # the tiny tokenizer's <|im_end|>: end of turn, EOS and padding, as in SmolLM2
PROMPTS = ("What is the capital of France?", "Write a haiku.", "Is this spam? Win a prize now!")


@pytest.fixture
def tok():
    return tiny_chat_tokenizer()


@pytest.fixture
def lm():
    torch.manual_seed(0)
    return load_causal_lm("tiny-llama")[0]


def _teach(model, tok, reply, prompt="Review {}: fine", epochs=15):
    """A few steps of SFT towards one reply to every prompt."""
    examples = [sft.build_sft_example(tok, prompt.format(i), reply, 256) for i in range(16)]
    loader = sft.make_sft_loader(examples, tok.pad_token_id, batch_size=8, shuffle=True)
    params = [p for p in model.parameters() if p.requires_grad]
    fit(sft.SFTModel(model), loader, None, epochs=epochs, optimizer=adamw(params, lr=1e-2), schedule="constant",
        progress=False)


@pytest.fixture(scope="module")
def _base_weights():
    """A tiny "instruct model" that answers every question with a sentence (the random one says newlines)."""
    torch.manual_seed(0)
    model = load_causal_lm("tiny-llama")[0]
    _teach(model, tiny_chat_tokenizer(), "Paris, of course.", prompt="Question {}?", epochs=40)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def base(_base_weights):
    model = load_causal_lm("tiny-llama")[0]
    model.load_state_dict(_base_weights)
    return model.eval()


def test_general_prompts_are_a_handful_of_varied_requests():
    assert 5 <= len(GENERAL_PROMPTS) <= 8 and len(set(GENERAL_PROMPTS)) == len(GENERAL_PROMPTS)
    assert all(isinstance(p, str) and p.strip() for p in GENERAL_PROMPTS)
    assert any("France" in p for p in GENERAL_PROMPTS) and any("spam" in p for p in GENERAL_PROMPTS)


def test_nll_is_the_mean_cross_entropy_of_the_reply_and_end_of_turn_given_the_prompt(tok, lm):
    result = general_replies(lm, tok, PROMPTS[:1], max_new_tokens=12)
    assert set(result) == {"prompts", "replies", "nll"} and result["prompts"] == list(PROMPTS[:1])
    (reply,) = result["replies"]
    assert reply == sft.greedy_generate(lm, tok, PROMPTS[0], max_new_tokens=12)
    # Computed without ftlib.generative.sft's example builder: the rendered prompt, the reply, <|im_end|>.
    rendered = tok.apply_chat_template(sft.chat_messages(PROMPTS[0]), tokenize=False, add_generation_prompt=True)
    context = tok(rendered, add_special_tokens=False)["input_ids"]
    answer = tok(reply, add_special_tokens=False)["input_ids"] + [IM_END]
    ids = torch.tensor([context + answer])
    with torch.no_grad():
        logits = lm(input_ids=ids).logits[0]
    expected = F.cross_entropy(logits[len(context) - 1:-1], ids[0, len(context):]).item()
    assert result["nll"] == pytest.approx(expected, abs=1e-4)


def test_nll_averages_over_all_reply_tokens_not_over_prompts(tok, lm):
    replies = ["a", "a much longer reply than the other one"]
    nll = reply_nll(lm, tok, PROMPTS[:2], replies)
    n = [len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for r in replies]  # + end of turn
    each = [reply_nll(lm, tok, [p], [r]) for p, r in zip(PROMPTS[:2], replies)]
    assert nll == pytest.approx((each[0] * n[0] + each[1] * n[1]) / sum(n), abs=1e-5)
    assert nll != pytest.approx(sum(each) / 2, abs=1e-3)
    with pytest.raises(ValueError, match="as many replies as prompts"):
        reply_nll(lm, tok, PROMPTS[:2], replies[:1])


@pytest.mark.parametrize("which", ["random", "taught"])
@pytest.mark.slow
def test_an_unchanged_model_has_forgotten_nothing(tok, lm, base, which):
    model = lm if which == "random" else base
    before = general_replies(model, tok, PROMPTS, max_new_tokens=16)
    report = generative_forgetting(model, tok, before, max_new_tokens=16)
    assert report["unchanged"] == 1.0
    assert report["replies_after"] == report["replies_before"] == before["replies"]
    assert report["nll_after"] == pytest.approx(report["nll_before"], abs=1e-5)
    assert report["nll_before"] == before["nll"]
    assert report["perplexity_before"] == pytest.approx(math.exp(before["nll"]))
    assert json.loads(json.dumps(report)) == report  # plain JSON


def test_perturbed_weights_make_the_base_replies_less_likely(tok, base):
    before = general_replies(base, tok, max_new_tokens=24)  # GENERAL_PROMPTS
    assert all(r.startswith("Par") for r in before["replies"]) and before["nll"] < 0.5  # sure of itself
    torch.manual_seed(1)
    with torch.no_grad():  # the blocks only: the embedding is tied to the output layer
        for p in base.model.layers.parameters():
            p.add_(0.5 * torch.randn_like(p))
    report = generative_forgetting(base, tok, before, max_new_tokens=24)
    assert report["nll_after"] > report["nll_before"] + 0.5
    # the base model's replies scored by the perturbed model, not the perturbed model's own
    assert report["nll_after"] == pytest.approx(reply_nll(base, tok, GENERAL_PROMPTS, before["replies"]), abs=1e-5)
    assert report["replies_after"] == general_replies(base, tok, max_new_tokens=24)["replies"]
    assert report["perplexity_after"] > report["perplexity_before"]
    assert report["prompts"] == list(GENERAL_PROMPTS)
    for key in ("replies_before", "replies_after"):
        assert isinstance(report[key], list) and len(report[key]) == len(GENERAL_PROMPTS)
        assert all(isinstance(r, str) for r in report[key])
    assert 0.0 <= report["unchanged"] < 1.0


def test_lora_fine_tuning_on_sentiment_is_measured_through_peft(tok, base):
    before = general_replies(base, tok, PROMPTS, max_new_tokens=24)  # before the adapters, as the job does
    assert all(r.startswith("Paris") for r in before["replies"])
    model = sft.add_lora(base, r=4, alpha=8)
    untouched = generative_forgetting(model, tok, before, max_new_tokens=24)  # B = 0: the same model
    assert untouched["unchanged"] == 1.0
    assert untouched["nll_after"] == pytest.approx(before["nll"], abs=1e-5)
    _teach(model, tok, "positive", epochs=10)
    report = generative_forgetting(model, tok, before, max_new_tokens=24)
    assert report["unchanged"] == 0.0 and not any(r.startswith("Paris") for r in report["replies_after"])
    assert report["nll_after"] > report["nll_before"] + 1.0


@pytest.mark.parametrize("training", [True, False])
def test_scoring_runs_in_eval_mode_without_gradients_and_restores_the_mode(tok, lm, training):
    seen = []
    lm.model.register_forward_pre_hook(lambda module, args: seen.append((module.training,
                                                                        torch.is_grad_enabled())))
    lm.train(training)
    before = general_replies(lm, tok, PROMPTS[:2], max_new_tokens=4)
    assert lm.training is training and all(m.training is training for m in lm.modules())
    generative_forgetting(lm, tok, before, max_new_tokens=4)
    assert lm.training is training and all(m.training is training for m in lm.modules())
    assert seen and set(seen) == {(False, False)}


def test_forgetting_needs_what_general_replies_returned(tok, lm):
    with pytest.raises(ValueError, match="general_replies"):
        generative_forgetting(lm, tok, {"prompts": ["hi"], "replies": ["hello"]})
    with pytest.raises(ValueError, match="at least one prompt"):
        general_replies(lm, tok, [])
