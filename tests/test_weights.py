import pytest
import torch

from ftlib.models import TinyCNN
from ftlib.weights import load_pretrained_weights, top_k_classes


def test_load_reports_new_head_as_expected():
    source = TinyCNN(num_classes=10)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    target = TinyCNN(num_classes=3)
    report = load_pretrained_weights(target, state)
    missing, unexpected = report
    assert set(missing) == {"fc.weight", "fc.bias"} and unexpected == []
    assert report.ok and "New head" in report.describe()
    assert torch.equal(target.blocks[0][0].weight, source.blocks[0][0].weight)


def test_load_reports_backbone_gaps_and_unexpected_keys_as_problems():
    state = TinyCNN().state_dict()
    del state["blocks.0.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    report = load_pretrained_weights(TinyCNN(), state)
    assert not report.ok
    assert "PROBLEM" in report.describe() and "blocks.0.0.weight" in report.describe() and "extra.weight" in report.describe()


def test_shape_mismatch_names_tensor_and_both_shapes():
    target = TinyCNN(num_classes=3)
    before = target.blocks[0][0].weight.clone()
    with pytest.raises(ValueError, match=r"fc.weight: checkpoint \(10, 64\) vs model \(3, 64\)"):
        load_pretrained_weights(target, TinyCNN(num_classes=10).state_dict())
    assert torch.equal(before, target.blocks[0][0].weight), "nothing may load when a shape mismatches"


def test_top_k_classes_eval_mode_no_grad_sorted():
    model = TinyCNN(num_classes=5).train()
    images = torch.randn(2, 3, 16, 16)
    top = top_k_classes(model, images, k=3, class_names=list("abcde"))
    assert model.training and len(top) == 2 and all(len(t) == 3 for t in top)
    probs = [p for _, p in top[0]]
    assert probs == sorted(probs, reverse=True)
    model.eval()
    expected = model(images).softmax(-1)[0].max().item()
    assert probs[0] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k_classes(model, images, k=0)
