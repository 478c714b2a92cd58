"""Preference tuning (ftlib.generative.preference) on the tiny random Llama: masks, sums, the reference, the loss."""
import math

import pytest
import torch
from torch.nn import functional as F

from ftlib.generative import preference as pref
from ftlib.generative import sft
from ftlib.models import load_causal_lm
from ftlib.train import fit

PAIRS = [("Headline: rain in Leeds?", "Leeds floods after storm", "It rained a lot in the city of Leeds today."),
         ("Headline: bank rates?", "Bank holds rates at 5%", "The bank said that rates will stay."),
         ("Headline: new phone?", "Apple unveils new phone", "A company has made a phone."),
         ("Headline: cup final?", "Arsenal win the cup", "There was a football match.")]


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return load_causal_lm("tiny-llama")


def _lora(model, std=0.3):
    torch.manual_seed(1)
    lora = sft.add_lora(model, r=4, alpha=8)
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # a non-zero adapter: the policy differs from the reference
            torch.nn.init.normal_(p, std=std)
    return lora


def _pairs(tokenizer, max_length=96):
    return [pref.build_preference_example(tokenizer, p, c, r, max_length) for p, c, r in PAIRS]


def _by_hand(logits, labels):
    """The summed log-probability of each row's labelled next tokens, one token at a time."""
    out = []
    for row_logits, row_labels in zip(logits, labels):
        total = 0.0
        for t in range(len(row_labels) - 1):
            if row_labels[t + 1] != -100:
                total += torch.log_softmax(row_logits[t].double(), -1)[row_labels[t + 1]].item()
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def test_completion_logprobs_sums_the_answer_tokens_only_with_one_shift():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, -100, -100], [-100, 5, 6, 7, 8, 1]])
    got = pref.completion_logprobs(logits, labels)
    assert got.shape == (2,)
    assert torch.allclose(got.double(), _by_hand(logits, labels), atol=1e-5)
    prompt_too = labels.clone()
    prompt_too[0, :2] = torch.tensor([2, 2])
    assert not torch.allclose(pref.completion_logprobs(logits, prompt_too), got)  # the mask matters
    with pytest.raises(ValueError, match=r"logits must be \(B, T, V\)"):
        pref.completion_logprobs(logits[0], labels[0])


def test_the_fast_path_equals_the_full_logits(tiny):
    model, tokenizer = tiny
    batch = pref.collate_preferences(_pairs(tokenizer), tokenizer.pad_token_id)
    flat = {k: batch[k].flatten(0, 1) for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        full = pref.completion_logprobs(model(input_ids=flat["input_ids"], attention_mask=flat["attention_mask"]).logits,
                                        flat["labels"])
        fast, counts = pref.sequence_logprobs(model, **flat)
    assert torch.allclose(fast, full, atol=1e-4)
    assert counts.tolist() == (flat["labels"][:, 1:] != -100).sum(1).tolist()


def test_examples_label_each_answer_and_its_end_of_turn_never_the_prompt(tiny):
    _, tokenizer = tiny
    example = pref.build_preference_example(tokenizer, "Why?", "Because.", "No idea at all.", max_length=256)
    for name, text in (("chosen", "Because."), ("rejected", "No idea at all.")):
        labelled = [t for t in example[name]["labels"] if t != -100]
        assert tokenizer.decode(labelled) == text + "<|im_end|>"
    assert example["chosen"]["input_ids"][:-len([t for t in example["chosen"]["labels"] if t != -100])] == \
        sft.prompt_ids(tokenizer, "Why?")
    with pytest.raises(ValueError, match="raise max_length"):
        pref.build_preference_example(tokenizer, "Why?", "word " * 80, "no", max_length=32)


def test_dpo_loss_is_the_papers_formula_and_its_rewards_are_detached():
    pc = torch.tensor([-5.0, -7.0], requires_grad=True)
    pr = torch.tensor([-6.0, -6.5], requires_grad=True)
    rc, rr = torch.tensor([-5.5, -7.0]), torch.tensor([-5.5, -7.0])
    loss, chosen, rejected = pref.dpo_loss(pc, pr, rc, rr, beta=0.5)
    by_hand = [-math.log(1 / (1 + math.exp(-0.5 * ((a - c) - (b - d)))))
               for a, b, c, d in zip([-5.0, -7.0], [-6.0, -6.5], [-5.5, -7.0], [-5.5, -7.0])]
    assert loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.25, 0.0]) and rejected.tolist() == pytest.approx([-0.25, 0.25])
    assert not chosen.requires_grad and not rejected.requires_grad
    loss.backward()
    assert pc.grad[0] < 0 < pr.grad[0]  # the loss falls as the chosen answer gains on the rejected one


def test_simpo_normalises_by_length_and_wants_a_margin():
    loss, chosen, rejected = pref.simpo_loss(torch.tensor([-4.0]), torch.tensor([-12.0]), torch.tensor([2.0]),
                                             torch.tensor([4.0]), beta=2.0, gamma=0.5)
    assert chosen.item() == -4.0 and rejected.item() == -6.0
    assert loss.item() == pytest.approx(-F.logsigmoid(torch.tensor(2.0 - 0.5)).item())


def test_the_reference_is_the_model_with_its_adapter_off_and_everything_is_put_back(tiny):
    base, tokenizer = tiny
    batch = pref.collate_preferences(_pairs(tokenizer), tokenizer.pad_token_id)
    flat = {k: batch[k].flatten(0, 1) for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        expected = pref.completion_logprobs(base(input_ids=flat["input_ids"],
                                                 attention_mask=flat["attention_mask"]).logits, flat["labels"])
    lora = _lora(base)
    lora.train()
    with torch.no_grad():
        policy = pref.completion_logprobs(lora(input_ids=flat["input_ids"],
                                               attention_mask=flat["attention_mask"]).logits, flat["labels"])
    assert not torch.allclose(policy, expected, atol=1e-3)  # the adapter changes the model
    reference = pref.reference_logprobs(lora, flat)
    assert torch.allclose(reference, expected, atol=1e-5)
    assert not reference.requires_grad and lora.training
    with torch.no_grad():
        again = pref.completion_logprobs(lora(input_ids=flat["input_ids"],
                                              attention_mask=flat["attention_mask"]).logits, flat["labels"])
    assert torch.allclose(again, policy, atol=1e-5)  # the adapter is back on
    with pytest.raises(TypeError, match="needs a peft model"):
        pref.reference_logprobs(load_causal_lm("tiny-llama")[0], flat)


def test_preference_accuracy_counts_ties_as_wrong():
    assert pref.preference_accuracy(torch.tensor([1.0, 2.0, 0.0, 3.0]), torch.tensor([0.0, 2.0, 1.0, 1.0])) == 0.5
    with pytest.raises(ValueError, match="one shape"):
        pref.preference_accuracy(torch.tensor([1.0]), torch.tensor([1.0, 2.0]))


def test_stored_references_start_dpo_at_zero_rewards(tiny):
    model, tokenizer = tiny
    pairs = pref.with_reference(_lora(model), _pairs(tokenizer), tokenizer.pad_token_id, batch_size=3)
    assert all(len(p["reference"]) == 2 for p in pairs)
    plain = pref.with_reference(model, _pairs(tokenizer), tokenizer.pad_token_id)  # no adapter: itself
    dpo = pref.PreferenceModel(model, method="dpo", beta=0.1).eval()
    batch = next(iter(pref.PreferenceLoader(plain, tokenizer.pad_token_id, batch_size=4)))
    with torch.no_grad():
        rewards = dpo(**{k: v for k, v in batch.items() if k != "labels"})
    assert rewards.shape == (4, 2) and torch.allclose(rewards, torch.zeros(4, 2), atol=1e-5)
    assert batch["labels"].tolist() == [0, 0, 0, 0] and batch["input_ids"].shape[-1] % 16 == 0
    with pytest.raises(ValueError, match="with_reference"):
        pref.PreferenceModel(model).eval()(batch["input_ids"], batch["attention_mask"], batch["answer_labels"])


def test_fits_cross_entropy_on_the_two_rewards_is_the_dpo_loss(tiny):
    model, tokenizer = tiny
    lora = _lora(model, std=0.05)
    pairs = pref.with_reference(lora, _pairs(tokenizer), tokenizer.pad_token_id)
    batch = next(iter(pref.PreferenceLoader(pairs, tokenizer.pad_token_id, batch_size=4)))
    dpo = pref.PreferenceModel(lora, beta=0.1).eval()
    with torch.no_grad():
        logits = dpo(**{k: v for k, v in batch.items() if k != "labels"})
        flat = {k: batch[k if k != "labels" else "answer_labels"].flatten(0, 1)
                for k in ("input_ids", "attention_mask", "labels")}
        policy = pref.completion_logprobs(lora(input_ids=flat["input_ids"],
                                               attention_mask=flat["attention_mask"]).logits, flat["labels"]).view(4, 2)
    loss, chosen, rejected = pref.dpo_loss(policy[:, 0], policy[:, 1], batch["reference"][:, 0],
                                           batch["reference"][:, 1], beta=0.1)
    assert F.cross_entropy(logits, batch["labels"]).item() == pytest.approx(loss.item(), abs=1e-5)
    assert dpo.loss(logits, batch["labels"]).item() == pytest.approx(loss.item(), abs=1e-5)
    assert torch.allclose(logits[:, 0], chosen, atol=1e-5) and torch.allclose(logits[:, 1], rejected, atol=1e-5)


@pytest.mark.slow  # a subprocess or a training run: make test, not test-fast
def test_dpo_with_fit_raises_the_preference_accuracy_and_records_the_rewards(tiny):
    model, tokenizer = tiny
    lora = _lora(model, std=0.0)  # the adapter starts at zero: policy == reference
    pairs = pref.with_reference(lora, _pairs(tokenizer), tokenizer.pad_token_id)
    loader = pref.PreferenceLoader(pairs, tokenizer.pad_token_id, batch_size=2, shuffle=True, seed=0)
    dpo = pref.PreferenceModel(lora, beta=0.5)
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=5e-3)
    history = fit(dpo, loader, pref.PreferenceLoader(pairs, tokenizer.pad_token_id, batch_size=4), epochs=6,
                  optimizer=optimizer, loss_fn=dpo.loss, seed=0, progress=False, schedule="constant")
    assert history.to_list()[-1]["val_accuracy"] == 1.0
    assert history.to_list()[-1]["val_loss"] < math.log(2)  # below the loss of a policy equal to its reference
    assert len(dpo.steps) == 6 * len(loader)
    first, last = dpo.steps[0], dpo.steps[-1]
    assert first["margin"] == pytest.approx(0.0, abs=1e-5)  # zero adapter: rewards start at zero
    assert last["margin"] > 0 and {"chosen_reward", "rejected_reward", "accuracy"} <= set(last)


def test_simpo_trains_without_a_reference(tiny):
    model, tokenizer = tiny
    lora = _lora(model, std=0.0)
    loader = pref.PreferenceLoader(_pairs(tokenizer), tokenizer.pad_token_id, batch_size=4)
    simpo = pref.PreferenceModel(lora, method="simpo")
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    history = fit(simpo, loader, loader, epochs=8, optimizer=optimizer, loss_fn=simpo.loss, seed=0, progress=False,
                  schedule="constant")
    assert history.to_list()[-1]["val_accuracy"] == 1.0
    rewards = torch.tensor([[-1.0, -1.2]])  # chosen ahead by 0.2, short of the 0.5 margin SimPO asks for
    assert simpo.loss(rewards, torch.tensor([0])).item() == pytest.approx(-F.logsigmoid(torch.tensor(0.2 - 0.5)).item())
    with pytest.raises(ValueError, match="method must be one of"):
        pref.PreferenceModel(lora, method="ppo")


@pytest.mark.parametrize("method", ["dpo", "simpo"])
def test_the_sft_term_adds_the_chosen_answers_nll_per_token(tiny, method):
    """RPO / CPO-SimPO: the loss is the preference loss plus sft_weight x the chosen answers' NLL,
    averaged over every chosen token of the batch (TRL's nll_loss), computed here token by token."""
    model, tokenizer = tiny
    lora = _lora(model, std=0.05)
    pairs = pref.with_reference(lora, _pairs(tokenizer), tokenizer.pad_token_id)
    batch = next(iter(pref.PreferenceLoader(pairs, tokenizer.pad_token_id, batch_size=4)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    plain = pref.PreferenceModel(lora, method=method).eval()
    rpo = pref.PreferenceModel(lora, method=method, sft_weight=0.7).eval()
    with torch.no_grad():
        base = plain.loss(plain(**inputs), batch["labels"]).item()
        with_term = rpo.loss(rpo(**inputs), batch["labels"]).item()
        chosen = {k: batch[k][:, 0] for k in ("input_ids", "attention_mask", "answer_labels")}
        logits = lora(input_ids=chosen["input_ids"], attention_mask=chosen["attention_mask"]).logits
    total, tokens = 0.0, 0
    for row in range(4):
        for t in range(logits.shape[1] - 1):
            target = chosen["answer_labels"][row, t + 1].item()
            if target != sft.IGNORE_INDEX:
                total -= torch.log_softmax(logits[row, t].double(), -1)[target].item()
                tokens += 1
    assert with_term == pytest.approx(base + 0.7 * total / tokens, abs=1e-4)
    assert with_term > base + 0.1  # the term is really there: tiny Llama's NLL is ~ log(vocabulary)
    with pytest.raises(ValueError, match="sft_weight must be a number >= 0"):
        pref.PreferenceModel(lora, sft_weight=-1.0)
    with pytest.raises(RuntimeError, match="forward"):
        rpo.loss(torch.zeros(4, 2), batch["labels"])  # its last forward was used up by the loss above


@pytest.mark.slow  # a training run: make test, not test-fast
def test_the_sft_term_keeps_the_chosen_answers_likely(tiny):
    """Plain DPO may win the margin by making both answers unlikely; the SFT term holds the chosen up."""
    model, tokenizer = tiny
    chosen_reward = {}
    for weight in (0.0, 1.0):
        lora = _lora(model, std=0.0)
        pairs = pref.with_reference(lora, _pairs(tokenizer), tokenizer.pad_token_id)
        loader = pref.PreferenceLoader(pairs, tokenizer.pad_token_id, batch_size=2, shuffle=True, seed=0)
        policy = pref.PreferenceModel(lora, beta=0.1, sft_weight=weight)
        optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=5e-3)
        fit(policy, loader, epochs=6, optimizer=optimizer, loss_fn=policy.loss, seed=0, progress=False,
            schedule="constant")
        policy.eval()
        with torch.no_grad():
            rewards = torch.cat([policy(**{k: v for k, v in b.items() if k != "labels"})
                                 for b in pref.PreferenceLoader(pairs, tokenizer.pad_token_id, batch_size=4)])
        chosen_reward[weight] = rewards[:, 0].mean().item()  # beta x (policy - reference) of the chosen answers
        model = lora.unload()  # the adapter off and away: the next run starts from the same weights
    assert chosen_reward[1.0] > chosen_reward[0.0] + 0.05, chosen_reward
    assert chosen_reward[1.0] > 0  # with the term, the real answers became more likely than under the reference
