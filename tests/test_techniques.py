import copy
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ftlib import techniques
from ftlib.data import collate_text
from ftlib.models import load_model
from ftlib.pipeline import FinetuneConfig
from ftlib.techniques import (TECHNIQUES, discriminative, feature_extraction, get_technique, gradual_unfreezing,
                              linear_probe, lora, lp_ft, partial_finetune, train_frozen, train_l2sp)
from ftlib.techniques.features import head_inputs
from ftlib.techniques.l2sp import backbone_state, weight_distance
from tiny_data import make_image_loader

TEXTS = ["a gripping, beautiful film", "dull and far too long", "the best thing this year", "a mess from start to end",
         "warm, funny and smart", "i wanted my money back", "a quiet triumph", "lifeless and cold"]


@pytest.fixture
def text_loader(tokenizer):
    pairs = [(t, i % 2) for i, t in enumerate(TEXTS)]
    return [collate_text(pairs[i:i + 4], tokenizer) for i in range(0, len(pairs), 4)]


@pytest.fixture
def tiny_bert():
    torch.manual_seed(0)
    return load_model("tiny-bert", num_classes=2)


def _moved(before: dict, model) -> dict[str, bool]:
    after = model.state_dict()
    return {k: not torch.equal(before[k], after[k]) for k in before}


def _is_head(name: str) -> bool:
    return name.split(".")[0] in ("fc", "classifier")


def test_frozen_moves_only_the_head_and_keeps_batchnorm_stats(tiny_cnn):
    before = copy.deepcopy(tiny_cnn.state_dict())
    train_frozen(tiny_cnn, make_image_loader(), None, epochs=1, lr=1e-2)
    moved = _moved(before, tiny_cnn)
    assert moved["fc.weight"] and moved["fc.bias"]
    frozen = {k: m for k, m in moved.items() if not _is_head(k)}
    assert frozen and not any(frozen.values()), [k for k, m in frozen.items() if m]  # weights and BN buffers


@pytest.mark.parametrize("frozen_blocks", [1, 2])
def test_partial_keeps_the_bottom_blocks_and_trains_everything_above(tiny_bert, text_loader, frozen_blocks):
    before = copy.deepcopy(tiny_bert.state_dict())
    out = partial_finetune(tiny_bert, text_loader, None, frozen_blocks=frozen_blocks, epochs=1, lr=1e-2)
    moved = _moved(before, tiny_bert)
    kept = ("bert.embeddings.", "bert.encoder.layer.0.")[:frozen_blocks]
    assert not any(m for k, m in moved.items() if k.startswith(kept))
    trained = [k for k in moved if not k.startswith(kept) and k.endswith("weight") and "LayerNorm" not in k]
    assert trained and all(moved[k] for k in trained), [k for k in trained if not moved[k]]
    frozen_params = sum(p.numel() for n, p in tiny_bert.named_parameters() if n.startswith(kept))
    assert out["trainable_parameters"] == out["total_parameters"] - frozen_params
    with pytest.raises(ValueError, match=r"frozen_blocks must be between 0 and 3.*bert.embeddings"):
        partial_finetune(tiny_bert, text_loader, None, frozen_blocks=6, epochs=1)


def test_linear_probe_leaves_backbone_unchanged_and_fits_the_head(tiny_cnn):
    train, val = make_image_loader(n=96), make_image_loader(n=48, seed=1)
    before = copy.deepcopy(tiny_cnn.state_dict())
    tiny_cnn.train()
    result = linear_probe(tiny_cnn, train, val)
    moved = _moved(before, tiny_cnn)
    assert not any(m for k, m in moved.items() if not _is_head(k))  # phase 1: backbone (and BN) untouched
    assert moved["fc.weight"]
    # The head now predicts what the fitted logistic regression predicts.
    X, y = head_inputs(tiny_cnn, val)
    logits = X @ tiny_cnn.fc.weight.detach().numpy().T + tiny_cnn.fc.bias.detach().numpy()
    assert (logits.argmax(1) == y).mean() == pytest.approx(result["val_accuracy"])
    assert result["val_accuracy"] > 0.5


def test_binary_linear_probe_matches_logistic_regression(tiny_bert, text_loader):
    result = linear_probe(tiny_bert, text_loader, text_loader, Cs=(1.0,))
    X, y = head_inputs(tiny_bert, text_loader)
    logits = X @ tiny_bert.classifier.weight.detach().numpy().T + tiny_bert.classifier.bias.detach().numpy()
    assert (logits.argmax(1) == y).mean() == pytest.approx(result["train_accuracy"])


def test_lp_ft_then_moves_the_backbone(tiny_cnn):
    w0 = backbone_state(tiny_cnn)
    result = lp_ft(tiny_cnn, make_image_loader(n=96), make_image_loader(n=48, seed=1), epochs=1, lr=1e-2)
    assert "val_accuracy" in result["probe"]
    assert result["probe"]["recalibrated_batchnorm_layers"] == 3  # the probe saw the new data's statistics
    assert weight_distance(tiny_cnn, w0)["relative"] > 0
    assert all(p.requires_grad for p in tiny_cnn.parameters())


def test_lora_trains_only_adapters_and_head(tiny_bert, text_loader):
    total = sum(p.numel() for p in tiny_bert.parameters())
    result = lora(tiny_bert, text_loader, None, epochs=2, lr=1e-2, r=4)
    model = result["model"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    # Adapters on query and value of 2 layers: 2 * 2 * (A: 4x32 + B: 32x4), plus the 32x2+2 head.
    assert result["trainable_parameters"] == 2 * 2 * (4 * 32 + 32 * 4) + 32 * 2 + 2
    assert result["trainable_share"] == pytest.approx(result["trainable_parameters"] / total)
    base = model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" in name or "classifier" in name:
            continue
        original = dict(load_model_state())[name.replace(".base_layer", "")]
        assert torch.equal(param, original), name  # pretrained weights did not move
    assert any(not torch.all(p == 0) for n, p in model.named_parameters() if "lora_B" in n)  # B trained away from 0


_STATE = {}


def load_model_state():
    if not _STATE:
        torch.manual_seed(0)
        _STATE.update(load_model("tiny-bert", num_classes=2).state_dict())
    return _STATE


def test_lora_refuses_image_models_and_bad_rank(tiny_cnn, tiny_bert, text_loader):
    with pytest.raises(ValueError, match="needs a Hugging Face transformer"):
        lora(tiny_cnn, make_image_loader(), None)
    with pytest.raises(ValueError, match=r"r must be a positive integer \(the LoRA rank\); got 0"):
        lora(tiny_bert, text_loader, None, r=0)


def test_gradual_unfreezing_first_epoch_trains_only_the_head(tiny_cnn):
    before = copy.deepcopy(tiny_cnn.state_dict())
    result = gradual_unfreezing(tiny_cnn, make_image_loader(), None, epochs=1, lr=1e-2)
    moved = _moved(before, tiny_cnn)
    assert moved["fc.weight"] and not any(m for k, m in moved.items() if not _is_head(k))
    assert result["blocks_per_epoch"] == 3  # one epoch: everything would unfreeze after it


def test_gradual_unfreezing_reaches_the_bottom_by_the_last_epoch(tiny_cnn):
    before = copy.deepcopy(tiny_cnn.state_dict())
    result = gradual_unfreezing(tiny_cnn, make_image_loader(), None, epochs=3, lr=1e-2)
    assert result["blocks_per_epoch"] == 2  # 3 blocks over the 2 epochs after the head's
    assert _moved(before, tiny_cnn)["blocks.0.0.weight"]


def test_l2sp_keeps_the_backbone_closer_than_plain_training():
    drifts = []
    for alpha in (0.0, 50.0):
        torch.manual_seed(0)
        model = load_model("tiny-cnn", num_classes=3)
        result = train_l2sp(model, make_image_loader(n=96), None, epochs=3, lr=1e-2, alpha=alpha)
        drifts.append(result["weight_drift"])
    assert drifts[1] < 0.5 * drifts[0]
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        train_l2sp(load_model("tiny-cnn", num_classes=3), make_image_loader(), None, alpha=-1)


def test_feature_extraction_counts_classifier_parameters(tiny_cnn):
    result = feature_extraction(tiny_cnn, make_image_loader(n=96), make_image_loader(n=48, seed=1))
    assert result["trainable_parameters"] == 64 * 3 + 3
    assert result["history"][0]["val_accuracy"] is not None
    assert not any(p.requires_grad for p in result["model"].parameters())


@pytest.mark.parametrize("name", [n for n in TECHNIQUES if n not in ("scratch",)])
def test_every_technique_runs_through_the_registry(name, tiny_bert, text_loader):
    cfg = FinetuneConfig(model="tiny-bert", technique=name, epochs=1, lr=1e-3, progress=False)
    result = TECHNIQUES[name].run(tiny_bert, text_loader, text_loader, cfg)
    assert len(result["history"]) >= 1 and result["trainable_parameters"] > 0
    from ftlib.train import evaluate

    assert 0.0 <= evaluate(result.get("model", tiny_bert), text_loader)["accuracy"] <= 1.0


def test_scratch_builds_a_new_random_model(tiny_bert, text_loader):
    cfg = FinetuneConfig(model="tiny-bert", technique="scratch", epochs=1, lr=1e-3, progress=False)
    result = TECHNIQUES["scratch"].run(tiny_bert, text_loader, None, cfg)
    assert result["model"] is not tiny_bert
    a = tiny_bert.bert.embeddings.word_embeddings.weight
    b = result["model"].bert.embeddings.word_embeddings.weight
    assert not torch.equal(a, b)


def test_unknown_technique_and_option_errors_list_what_is_accepted(tiny_cnn):
    with pytest.raises(ValueError, match=r"Unknown technique 'magic'. Available techniques: full, partial, scratch, "
                                         r"feature-extraction, frozen, lp-ft"):
        get_technique("magic")
    with pytest.raises(ValueError, match=r"^technique must be one of \[.*'lora'.*\]; got 'magic'"):
        FinetuneConfig(technique="magic").resolved()
    cfg = FinetuneConfig(model="tiny-cnn", technique="l2sp", epochs=1, lr=1e-3, progress=False,
                         technique_options={"rank": 4})
    with pytest.raises(ValueError, match="Technique 'l2sp' has no option 'rank'; it accepts: alpha"):
        TECHNIQUES["l2sp"].run(tiny_cnn, make_image_loader(), None, cfg)


def test_technique_options_reach_the_function():
    torch.manual_seed(0)
    model = load_model("tiny-cnn", num_classes=3)
    w0 = backbone_state(model)
    cfg = FinetuneConfig(model="tiny-cnn", technique="l2sp", epochs=1, lr=1e-2, progress=False,
                         technique_options={"alpha": 0.5})
    result = TECHNIQUES["l2sp"].run(model, make_image_loader(), None, cfg)
    squared = weight_distance(model, w0)["squared"]
    assert squared > 0 and result["final_penalty"] == pytest.approx(0.5 * 0.5 * squared, rel=1e-5)


@pytest.mark.parametrize("name, function", [
    ("partial", partial_finetune), ("feature-extraction", feature_extraction), ("frozen", train_frozen),
    ("discriminative", discriminative), ("gradual", gradual_unfreezing), ("l2sp", train_l2sp), ("lora", lora)])
def test_an_option_default_is_the_function_keyword_default(name, function):
    parameters = inspect.signature(function).parameters
    options = {k: v for k, v in TECHNIQUES[name].options.items() if k != "lr_factor"}  # the entry's own: cfg.lr x
    assert options and options == {k: parameters[k].default for k in options}


def test_descriptions_state_the_defaults():
    assert f"rank {TECHNIQUES['lora'].options['r']})" in TECHNIQUES["lora"].description
    assert f"lr {TECHNIQUES['lora'].options['lr_factor']:g}x" in TECHNIQUES["lora"].description
    d = TECHNIQUES["discriminative"]
    decay, head = d.options["layer_decay"], d.options["head_lr_multiplier"]
    assert f"decay {decay:g} per block, head at {head:g}x" in d.description
    assert f"{TECHNIQUES['lp-ft'].options['lr_factor']:g}x the lr" in TECHNIQUES["lp-ft"].description


def test_reading_the_registry_imports_no_torch_and_no_module_shadows_a_function():
    code = ("import sys\nfrom ftlib.techniques import TECHNIQUES\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'torch or numpy imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # `ftlib.techniques.lora` must be the function, never a module of the same name that an
    # import of the submodule would put in its place (see tests/test_imports.py).
    modules = {p.stem for p in Path(techniques.__file__).parent.glob("*.py")}
    assert not set(techniques.__all__) & modules
