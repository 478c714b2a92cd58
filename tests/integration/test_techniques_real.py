"""Techniques on the real pretrained models and data sets (small sizes; marked integration)."""
import copy

import numpy as np
import pytest
import torch

from ftlib.data import load_dataset, make_loader, split_dataset
from ftlib.forgetting import forgetting_report, probe_photos
from ftlib.models import count_parameters, load_model, load_tokenizer
from ftlib.techniques import linear_probe, lora
from ftlib.techniques.features import cached_features, fit_classifier
from ftlib.train import fit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rt_splits():
    return split_dataset(load_dataset("rotten-tomatoes"), train_size=200, val_size=100, test_size=50, seed=0)


@pytest.fixture(scope="module")
def fmnist_splits():
    return split_dataset(load_dataset("fashion-mnist"), train_size=40, val_size=40, test_size=40, seed=0)


def test_minilm_features_separate_sentiment_and_cache(rt_splits, tmp_path):
    model = load_model("minilm-l6", num_classes=2)
    tokenizer = load_tokenizer("minilm-l6")
    loaders = {s: make_loader(getattr(rt_splits, s), "minilm-l6", tokenizer=tokenizer) for s in ("train", "val")}
    key = {"model": "minilm-l6", "dataset": "rotten-tomatoes", "seed": 0}
    X, y = cached_features(model, loaders["train"], cache_dir=tmp_path, key={**key, "split": "train"})
    Xv, yv = cached_features(model, loaders["val"], cache_dir=tmp_path, key={**key, "split": "val"})
    assert X.shape == (200, 384)
    clf = fit_classifier(X, y, Xv, yv)
    assert (clf.predict(Xv) == yv).mean() > 0.65  # 0.5 is chance; frozen MiniLM knows sentiment
    X2, _ = cached_features(None, None, cache_dir=tmp_path, key={**key, "split": "train"})  # no model needed
    assert np.array_equal(X, X2)


def test_lora_on_minilm_trains_a_fraction_of_a_percent(rt_splits):
    model = load_model("minilm-l6", num_classes=2)
    total = count_parameters(model)[1]
    query_before = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    small = rt_splits.train.subset(np.arange(32))
    result = lora(model, make_loader(small, "minilm-l6", batch_size=16), None, epochs=1, r=8)
    # 6 layers x (query, value) x (A: 8x384 + B: 384x8), plus the 384x2+2 head.
    assert result["trainable_parameters"] == 6 * 2 * (8 * 384 + 384 * 8) + 384 * 2 + 2
    assert result["trainable_share"] == pytest.approx(result["trainable_parameters"] / total)
    assert result["trainable_share"] < 0.005
    base = result["model"].get_base_model()
    assert torch.equal(base.bert.encoder.layer[0].attention.self.query.base_layer.weight, query_before)


def test_linear_probe_keeps_efficientnet_and_its_batchnorm_untouched(fmnist_splits):
    model = load_model("efficientnet-lite0", num_classes=10)
    before = copy.deepcopy(model.state_dict())
    model.train()
    loader = make_loader(fmnist_splits.train, "efficientnet-lite0", image_size=64)
    linear_probe(model, loader, None, Cs=(1.0,))
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["_fc.weight", "_fc.bias"]


def test_forgetting_is_none_for_a_frozen_backbone_and_some_after_fine_tuning(fmnist_splits):
    pretrained = load_model("efficientnet-lite0", num_classes=None)
    photos = probe_photos(num_crops=2)
    model = load_model("efficientnet-lite0", num_classes=10)
    untouched = forgetting_report(model, pretrained, photos)
    assert untouched["top1_agreement"] == 1.0 and untouched["weight_drift"] == 0.0
    loader = make_loader(fmnist_splits.train, "efficientnet-lite0", image_size=64, batch_size=20)
    fit(model, loader, None, epochs=2, lr=1e-2, progress=False)
    after = forgetting_report(model, pretrained, photos)
    assert after["weight_drift"] > 0.0 and 0.0 <= after["top1_agreement"] <= 1.0
    assert after["num_images"] == 6
