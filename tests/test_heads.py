import pytest
import torch
from torch import nn

from ftlib.heads import find_head, replace_head, set_dropout
from ftlib.models import load_model


@pytest.mark.parametrize("attr", ["fc", "classifier", "_fc", "head"])
def test_replace_head_on_any_recognised_name(attr):
    model = nn.Module()
    setattr(model, attr, nn.Linear(5, 1000))
    replace_head(model, 3)
    head = getattr(model, attr)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (5, 3)


def test_replace_head_with_dropout_and_hf_config():
    model = load_model("tiny-bert", num_classes=2)
    replace_head(model, 4, dropout=0.3)
    assert isinstance(model.classifier[0], nn.Dropout) and model.classifier[0].p == 0.3
    assert model.classifier[1].out_features == 4 and model.config.num_labels == 4
    out = model(input_ids=torch.randint(0, 100, (2, 5)))
    assert out.logits.shape == (2, 4)


def test_replace_head_keeps_device_and_dtype():
    model = load_model("tiny-cnn", num_classes=3).double()
    replace_head(model, 5)
    assert model.fc.weight.dtype == torch.float64


def test_replace_head_errors():
    model = load_model("tiny-cnn", num_classes=3)
    for bad in (1, 0, True, 2.0):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
            replace_head(model, bad)
    with pytest.raises(ValueError, match="dropout"):
        replace_head(model, 3, dropout=1.0)
    with pytest.raises(ValueError, match="Could not find a classification head.*'conv'"):
        find_head(_no_head())


def _no_head():
    model = nn.Module()
    model.conv = nn.Conv2d(1, 1, 1)
    return model


def test_set_dropout_changes_every_dropout_and_config():
    model = load_model("tiny-bert", num_classes=2)
    changed = set_dropout(model, 0.25)
    assert changed > 0
    assert all(m.p == 0.25 for m in model.modules() if isinstance(m, nn.Dropout))
    assert model.config.hidden_dropout_prob == 0.25
