"""ftlib.generative.decoding: sampling one token, and greedy decoding with the KV cache (tiny random Llama)."""
import pytest
import torch

from ftlib.arguments import ArgumentError
from ftlib.generative import sft
from ftlib.generative.decoding import generate_with_cache, sample_next_token
from ftlib.models import load_causal_lm, tiny_chat_tokenizer


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return load_causal_lm("tiny-llama")[0].eval()


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, -1.0, 4.99]])
    assert sample_next_token(logits, 0.0, 0.9, _seeded()).tolist() == [1, 0]


def test_a_sample_is_reproducible_with_the_same_generator_and_varies_without():
    logits = torch.zeros(4, 50)
    first = sample_next_token(logits, 1.0, 1.0, _seeded(3))
    assert torch.equal(first, sample_next_token(logits, 1.0, 1.0, _seeded(3)))
    draws = {tuple(sample_next_token(logits, 1.0, 1.0, _seeded(s)).tolist()) for s in range(5)}
    assert len(draws) > 1
    assert first.shape == (4,) and first.dtype == torch.int64


def test_top_p_keeps_the_smallest_set_that_reaches_it():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.8 keeps the first two, 0.81 the first three
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(2000, 1)
    kept = set(sample_next_token(logits, 1.0, 0.8, _seeded()).tolist())
    assert kept == {0, 1}
    assert set(sample_next_token(logits, 1.0, 0.81, _seeded()).tolist()) == {0, 1, 2}
    assert set(sample_next_token(logits, 1.0, 1e-6, _seeded()).tolist()) == {0}  # at least one token
    counts = torch.bincount(sample_next_token(logits, 1.0, 0.8, _seeded()), minlength=4)
    assert abs(counts[0] / 2000 - 0.5 / 0.8) < 0.05  # renormalized over the nucleus


def test_temperature_comes_before_top_p():
    # At temperature 0.25 the probabilities 0.5/0.3/0.2 become 0.87/0.11/0.02: top_p 0.9 keeps
    # two tokens; applied to the untempered distribution it would keep all three.
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().repeat(3000, 1)
    assert set(sample_next_token(logits, 0.25, 0.9, _seeded()).tolist()) == {0, 1}


@pytest.mark.parametrize("kwargs, name", [({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p"),
                                          ({"top_p": 1.5}, "top_p")])
def test_bad_sampling_arguments_are_named(kwargs, name):
    with pytest.raises(ArgumentError, match=f"^{name} "):
        sample_next_token(torch.zeros(1, 3), **{"temperature": 1.0, "top_p": 1.0, **kwargs})


def test_logits_must_be_two_dimensional():
    with pytest.raises(ValueError, match="batch, vocabulary"):
        sample_next_token(torch.zeros(3), 1.0, 1.0)


def test_the_cache_loop_gives_the_tokens_of_generate(lm):
    tok = tiny_chat_tokenizer()
    eos = sft.end_of_turn_id(tok)
    for prompt in ("Hello there", "Is this review positive? Great film."):
        ids = sft.prompt_ids(tok, prompt)
        expected = lm.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
        want = expected[0, len(ids):].tolist()
        assert generate_with_cache(lm, ids, 12, eos) == want
        assert generate_with_cache(lm, torch.tensor([ids]), 12, eos) == want


def test_the_cache_loop_stops_at_the_end_token_and_at_max_new_tokens(lm):
    ids = [5, 6, 7]
    free = generate_with_cache(lm, ids, 6, None)
    assert len(free) == 6
    stopped = generate_with_cache(lm, ids, 6, free[2])
    assert stopped == free[:free.index(free[2]) + 1]  # up to and with the end token
    assert generate_with_cache(lm, ids, 0, None) == []


def test_the_cache_loop_runs_one_position_per_new_token(lm):
    seen = []
    hook = lm.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    try:
        generate_with_cache(lm, [5, 6, 7, 8], 5, None)
    finally:
        hook.remove()
    assert seen == [4, 1, 1, 1, 1]  # the prompt once, then only the token just chosen
