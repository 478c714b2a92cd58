"""ftlib.generative.sft on a tiny random Llama (2 layers, byte-level ChatML tokenizer): seconds, no downloads."""
import pytest
import torch
from torch.nn import functional as F

from ftlib.generative import sft
from ftlib.models import load_causal_lm, tiny_chat_tokenizer
from ftlib.optim import adamw
from ftlib.train import fit

IM_END = 2  # the tiny tokenizer's <|im_end|>: end of turn, EOS and padding, as in SmolLM2


@pytest.fixture
def tok():
    return tiny_chat_tokenizer()


@pytest.fixture
def lm():
    torch.manual_seed(0)
    return load_causal_lm("tiny-llama")[0]


def _prompt_text(tok, prompt):
    return tok.apply_chat_template(sft.chat_messages(prompt), tokenize=False, add_generation_prompt=True)


def test_example_is_the_chat_template_with_labels_on_the_answer_only(tok):
    ex = sft.build_sft_example(tok, "Is it good?", "yes", max_length=256)
    assert len(ex["input_ids"]) == len(ex["attention_mask"]) == len(ex["labels"])
    assert all(isinstance(t, int) for key in ex for t in ex[key])
    n_prompt = len(tok(_prompt_text(tok, "Is it good?"), add_special_tokens=False)["input_ids"])
    assert tok.decode(ex["input_ids"]) == _prompt_text(tok, "Is it good?") + "yes<|im_end|>"
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["labels"][-1] == IM_END  # the model must learn to stop
    assert set(ex["attention_mask"]) == {1}


def test_the_short_system_prompt_replaces_the_default_one(tok):
    rendered = _prompt_text(tok, "hi")
    assert rendered.startswith("<|im_start|>system\n" + sft.SYSTEM_PROMPT + "<|im_end|>")
    assert "SmolLM" not in rendered  # the template's 20-token default is not paid for


def test_truncation_cuts_the_start_of_the_prompt_never_the_completion(tok):
    full = sft.build_sft_example(tok, "a long review " * 20, "positive", max_length=10_000)
    cut = sft.build_sft_example(tok, "a long review " * 20, "positive", max_length=60)
    assert len(cut["input_ids"]) == 60
    assert cut["input_ids"] == full["input_ids"][-60:]  # the end survives: header, then answer
    assert cut["labels"] == full["labels"][-60:]
    assert tok.decode([t for t in cut["labels"] if t != -100]) == "positive<|im_end|>"
    with pytest.raises(ValueError, match="completion alone"):
        sft.build_sft_example(tok, "hi", "a completion far too long", max_length=10)


def test_collate_right_pads_and_keeps_the_end_of_turn_that_equals_the_pad_token(tok):
    short = sft.build_sft_example(tok, "a", "no", 256)
    long = sft.build_sft_example(tok, "a longer prompt", "yes", 256)
    batch = sft.collate_sft([short, long], tok.pad_token_id)
    n = len(short["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(long["input_ids"]))
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0, :n].tolist() == short["input_ids"]  # real tokens first: right padding
    assert (batch["input_ids"][0, n:] == tok.pad_token_id).all()
    assert (batch["attention_mask"][0, n:] == 0).all() and (batch["attention_mask"][0, :n] == 1).all()
    assert (batch["labels"][0, n:] == -100).all()
    assert batch["labels"][0, n - 1] == IM_END == tok.pad_token_id


def test_generation_batches_are_left_padded():
    batch = sft.collate_for_generation([[5, 6, 7], [8]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_loss_is_the_mean_over_labelled_next_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 5]])
    terms = [-F.log_softmax(logits[b, t - 1], -1)[labels[b, t]] for b in range(2) for t in range(1, 5)
             if labels[b, t] != -100]
    assert torch.allclose(sft.causal_lm_loss(logits, labels), torch.stack(terms).mean())
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        sft.causal_lm_loss(logits[0], labels[0])


def test_sft_model_projects_only_labelled_positions_and_fit_sees_the_same_loss(tok, lm):
    examples = [sft.build_sft_example(tok, p, c, 256) for p, c in [("a", "yes"), ("bcd", "no")]]
    collated = sft.collate_sft(examples, tok.pad_token_id)
    [batch] = list(sft.make_sft_loader(examples, tok.pad_token_id, batch_size=2, pad_to_multiple_of=None))
    full = lm(input_ids=collated["input_ids"], attention_mask=collated["attention_mask"]).logits
    # The loader sorts by length; both give the same set of (row, position) pairs here.
    assert batch["input_ids"].tolist() == collated["input_ids"].tolist()
    logits = sft.SFTModel(lm)(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
    assert logits.shape == (int((collated["labels"] != -100).sum()), lm.config.vocab_size)
    assert torch.allclose(logits, full[batch["target_mask"]], atol=1e-5)
    assert torch.allclose(F.cross_entropy(logits, batch["labels"]), sft.causal_lm_loss(full, collated["labels"]),
                          atol=1e-5)


def test_lengths_padded_to_a_multiple_of_16_change_neither_logits_nor_labels(tok, lm):
    # 62, 63 and 62 tokens: one group of the loader (rounded up to 64)
    examples = [sft.build_sft_example(tok, p, c, 256) for p, c in [("a", "yes"), ("bcd", "no"), ("xy", "ok")]]
    [exact] = list(sft.make_sft_loader(examples, IM_END, batch_size=3, pad_to_multiple_of=None))
    [padded] = list(sft.make_sft_loader(examples, IM_END, batch_size=3))
    width = exact["input_ids"].shape[1]
    assert width % 16 and padded["input_ids"].shape == (3, width + (-width) % 16)
    assert torch.equal(padded["input_ids"][:, :width], exact["input_ids"])
    assert not padded["attention_mask"][:, width:].any() and not padded["target_mask"][:, width:].any()
    assert torch.equal(padded["labels"], exact["labels"])
    model = sft.SFTModel(lm.eval())
    assert torch.allclose(model(padded["input_ids"], padded["attention_mask"], padded["target_mask"]),
                          model(exact["input_ids"], exact["attention_mask"], exact["target_mask"]), atol=1e-5)


def test_loader_token_budget_counts_the_padded_length(tok):
    examples = [sft.build_sft_example(tok, "x" * n, "y", 512) for n in [10, 11, 12, 13]]  # 69-72 tokens
    loader = sft.make_sft_loader(examples, IM_END, batch_size=4, max_tokens=4 * 72)
    assert [tuple(b["input_ids"].shape) for b in loader] == [(3, 80), (1, 80)]  # 4 x 80 > 288


def test_loader_is_seeded_and_covers_every_example_once(tok):
    examples = [sft.build_sft_example(tok, "x" * i, "y", 256) for i in range(1, 20)]
    first = [b["input_ids"].shape for b in sft.make_sft_loader(examples, IM_END, batch_size=4, shuffle=True, seed=1)]
    again = [b["input_ids"].shape for b in sft.make_sft_loader(examples, IM_END, batch_size=4, shuffle=True, seed=1)]
    assert first == again
    assert sum(s[0] for s in first) == len(examples)


def test_loader_length_is_the_same_in_every_epoch_and_said_before_the_first(tok):
    # Notebook 09 printed "186 steps" after a progress bar of 187/187: len() drew the next
    # epoch's plan, whose count differed; fit's schedule (epochs x len) was off the same way.
    examples = [sft.build_sft_example(tok, "x" * n, "y", 512) for n in [1, 2, 3, 4, 5, 9, 12, 14, 20, 27, 30, 41] * 11]
    for seed in range(5):
        loader = sft.make_sft_loader(examples, IM_END, batch_size=4, shuffle=True, seed=seed, max_tokens=128)
        announced = len(loader)
        epochs = []
        for _ in range(4):
            epochs.append([b["input_ids"].shape for b in loader])
            assert len(loader) == len(epochs[-1]) == announced, f"seed {seed}: len() changed between epochs"
    assert len({tuple(e) for e in epochs}) > 1, "shuffled epochs should differ in order"
    sizes = loader.batch_sizes()
    assert sum(sizes.values()) == announced and sum(k * v for k, v in sizes.items()) == len(examples)
    assert all(rows * width <= 128 or rows == 1 for e in epochs for rows, width in e)
    # One group per batch: no row is padded by 16 tokens or more.
    batch = next(iter(loader))
    lengths = batch["attention_mask"].sum(1)
    assert int(lengths.max() - lengths.min()) < 16


def test_score_choices_sums_the_choice_tokens_log_probs_in_eval_mode(tok, lm):
    lm.train()
    scores = sft.score_choices(lm, tok, "Good?", ["yes", "no!"])
    assert lm.training and not scores.requires_grad
    assert scores.shape == (2,)
    for choice, score in zip(["yes", "no!"], scores):
        ids = tok(_prompt_text(tok, "Good?") + choice, add_special_tokens=False)["input_ids"]
        n = len(tok(choice, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            lp = torch.log_softmax(lm.eval()(input_ids=torch.tensor([ids])).logits[0], -1)
        expected = sum(lp[t - 1, ids[t]] for t in range(len(ids) - n, len(ids)))
        assert torch.allclose(score, expected, atol=1e-4)
    assert sft.classify(lm, tok, ["Good?"], ["yes", "no!"]) == [int(scores.argmax())]


def _teach(lm, tok, reply="ok", epochs=40):
    """Full fine-tune of the tiny model until it answers ``reply`` to any prompt."""
    examples = [sft.build_sft_example(tok, f"Say it {i}", reply, 256) for i in range(16)]
    loader = sft.make_sft_loader(examples, tok.pad_token_id, batch_size=8, shuffle=True)
    return fit(sft.SFTModel(lm), loader, None, epochs=epochs, optimizer=adamw(lm.parameters(), lr=1e-2),
               schedule="constant", progress=False)


@pytest.mark.slow
def test_a_short_fit_teaches_the_reply_and_generation_stops_at_end_of_turn(tok, lm):
    history = _teach(lm, tok)
    assert history["train_loss"][-1] < 0.05 < history["train_loss"][0]
    reply = sft.greedy_generate(lm, tok, "Say it 99", max_new_tokens=20)
    assert reply == "ok"  # not "okokok...": the end of turn was learned and stops it
    assert sft.generate(lm, tok, ["Say it 1", "a much longer prompt here"], 20) == ["ok", "ok"]  # left padding


def test_lora_trains_only_the_adapters_on_every_linear_layer(tok, lm):
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    model = sft.add_lora(lm, r=4, alpha=8)
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    examples = [sft.build_sft_example(tok, "q", "a", 256)] * 4
    fit(sft.SFTModel(model), sft.make_sft_loader(examples, IM_END, batch_size=4), None, epochs=2,
        optimizer=adamw([p for p in model.parameters() if p.requires_grad], lr=1e-2), progress=False)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            assert p.abs().sum() > 0  # moved away from its zero start
        elif "lora_" not in n:
            assert torch.equal(p.cpu(), before[n.replace("base_model.model.", "").replace(".base_layer", "")])


def test_adding_and_loading_an_adapter_shows_the_learner_no_library_warning(tmp_path):
    # peft read transformers' deprecated is_gradient_checkpointing: a pink FutureWarning under
    # every LoRA cell of notebook 09 (make lab, nbconvert), about code the learner never wrote.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = sft.add_lora(load_causal_lm("tiny-llama")[0], r=2, alpha=4)
        sft.save_adapter(model, tmp_path / "adapter")
        sft.load_adapter(load_causal_lm("tiny-llama")[0], tmp_path / "adapter")


def test_adapter_save_load_and_merge_give_identical_outputs(tok, tmp_path):
    torch.manual_seed(0)
    base = load_causal_lm("tiny-llama")[0]
    state = {k: v.clone() for k, v in base.state_dict().items()}
    model = sft.add_lora(base, r=4, alpha=8)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # an adapter that changes the outputs
    ids = torch.tensor([sft.build_sft_example(tok, "hello", "yes", 256)["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    sft.save_adapter(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000  # the adapter alone

    fresh = load_causal_lm("tiny-llama")[0]
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert not torch.allclose(fresh(input_ids=ids).logits, expected, atol=1e-3)
    reloaded = sft.load_adapter(fresh, tmp_path / "adapter")
    merged = sft.merge_lora(reloaded)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
    with pytest.raises(TypeError, match="peft model"):
        sft.merge_lora(merged)
    # The peft wrapper merge_lora was called on is empty now: saving it would write an adapter of
    # 0 tensors (40 bytes) that reloads as no change, so it is refused with the reason.
    with pytest.raises(ValueError, match="merge_lora folded them"):
        sft.save_adapter(reloaded, tmp_path / "after-merge")
    assert not (tmp_path / "after-merge").exists()


@pytest.mark.parametrize("flags, capability, native", [
    (True, "AVX512", True),
    (True, "AVX2", False),  # the CPU has the instructions, PyTorch was told not to use them
    (False, "AVX512", False),
])
def test_bf16_is_native_agrees_with_what_fit_picks_for_auto(monkeypatch, flags, capability, native):
    from ftlib import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert sft.bf16_is_native() is native
    assert (devices.resolve_precision("auto", "cpu") == "bf16") is native


def test_scoring_and_generation_move_batches_to_the_model_device(moved_to, tok, lm):
    # After fit on a GPU the model stays there; batches collated on the CPU must follow.
    moved = moved_to
    where = next(lm.parameters()).device
    for choices in (["y", "n"], ["yes", "no", "maybe"]):  # one-token and several-token paths
        moved.clear()
        scores = sft.choice_scores(lm, tok, ["Good?", "Bad?"], choices, batch_size=1)
        assert moved and set(moved) == {where} and scores.device.type == "cpu"
    moved.clear()
    assert sft.score_choices(lm, tok, "Good?", ["y", "n"]).device.type == "cpu" and moved == [where]
    moved.clear()
    sft.generate(lm, tok, ["a", "b", "c"], max_new_tokens=2, batch_size=2)
    assert moved == [where, where]


def test_classify_agrees_with_score_choices_on_one_and_several_token_choices(tok, lm):
    prompts = ["Good?", "Is this fine, or not at all?", "x"]
    for choices in (["y", "n"], ["yes", "no", "maybe"]):
        expected = torch.stack([sft.score_choices(lm, tok, p, choices) for p in prompts])
        assert torch.allclose(sft.choice_scores(lm, tok, prompts, choices, batch_size=2), expected, atol=1e-4)
        assert sft.classify(lm, tok, prompts, choices) == expected.argmax(1).tolist()


def test_loader_token_budget_bounds_every_batch_and_len_matches_iteration(tok):
    examples = [sft.build_sft_example(tok, "x" * n, "y", 512) for n in [1, 2, 3, 150, 160, 170, 4, 5]]
    loader = sft.make_sft_loader(examples, IM_END, batch_size=4, shuffle=True, seed=0, max_tokens=400)
    for _ in range(2):  # two epochs: len() announces the batches the next iteration yields
        expected = len(loader)
        batches = list(loader)
        assert len(batches) == expected
        assert all(b["input_ids"].numel() <= 400 or b["input_ids"].shape[0] == 1 for b in batches)
        assert sum(b["input_ids"].shape[0] for b in batches) == len(examples)
