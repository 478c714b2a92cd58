import pytest
import torch
from torch import nn

from ftlib.models import MODELS, count_parameters, fix_batchnorm_momentum, get_model_spec, load_model


def test_registry_entries_say_what_a_learner_needs():
    for spec in MODELS.values():
        assert spec.task in ("text", "image", "text generation")
        assert spec.num_parameters and spec.input_size and spec.source and spec.licence
        if spec.task == "image":
            assert len(spec.mean) == 3 and len(spec.std) == 3 and spec.image_size % 8 == 0


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="Known models: minilm-l6, efficientnet-lite0"):
        get_model_spec("resnet999")


def test_hub_id_needs_explicit_permission():
    with pytest.raises(ValueError, match="allow_download=True"):
        load_model("bert-base-uncased/x")


def test_hub_id_offline_fails_fast_with_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="Could not download 'nobody/no-such-model'"):
        load_model("nobody/no-such-model", allow_download=True)


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, "3"])
def test_num_classes_must_be_at_least_two(bad):
    with pytest.raises(ValueError, match="num_classes"):
        load_model("tiny-cnn", num_classes=bad)


def test_tiny_models_build_with_requested_classes():
    cnn = load_model("tiny-cnn", num_classes=4)
    assert cnn(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    bert = load_model("tiny-bert", num_classes=3)
    out = bert(input_ids=torch.randint(0, 100, (2, 7)), attention_mask=torch.ones(2, 7, dtype=torch.long))
    assert out.logits.shape == (2, 3)


def test_tiny_models_have_no_pretrained_weights():
    with pytest.raises(ValueError, match="no pretrained weights"):
        load_model("tiny-cnn", pretrained=True)


def test_count_parameters_counts_trainable_and_shared_once():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    model[1].weight.requires_grad_(False)
    assert count_parameters(model) == (3 * 2 + 2 + 2, 3 * 2 + 2 + 4 + 2)
    shared = nn.Linear(2, 2)
    assert count_parameters(nn.Sequential(shared, shared)) == (6, 6)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        count_parameters("model")


def test_fix_batchnorm_momentum_sets_every_batchnorm():
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.01), nn.Sequential(nn.BatchNorm1d(2, momentum=0.01)))
    fix_batchnorm_momentum(model, 0.1)
    assert [m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [0.1, 0.1]
    with pytest.raises(ValueError, match="momentum"):
        fix_batchnorm_momentum(model, 0)


def test_every_top_level_name_resolves_lazily():
    import subprocess
    import sys

    # Each name is the object its module defines, not merely something getattr returns.
    code = ("import importlib, sys, ftlib; assert 'torch' not in sys.modules, 'import ftlib must stay cheap'; "
            "wrong = [n for n in ftlib.__all__ if getattr(ftlib, n) is not "
            "getattr(importlib.import_module('ftlib.' + ftlib._EXPORTS[n]), n)]; "
            "assert not wrong, wrong; print(len(ftlib.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 45
