import numpy as np
import pytest
import torch

from ftlib.data import collate_text
from ftlib.evaluate import HeldOutTest
from ftlib.techniques.features import (ProbeModel, cached_features, extract_features, feature_cache_path,
                                       fit_classifier, head_inputs, mean_pool)
from ftlib.models import load_model
from tiny_data import make_image_loader


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2), last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]
    with pytest.raises(ValueError, match="attention_mask"):
        mean_pool(hidden, torch.ones(1, 2))


def test_image_features_are_what_the_head_sees(tiny_cnn, image_loader):
    tiny_cnn.train()
    stats = {n: b.clone() for n, b in tiny_cnn.named_buffers()}
    X, y = extract_features(tiny_cnn, image_loader)
    assert X.shape == (48, 64) and X.dtype == np.float32 and y.shape == (48,)
    x = torch.cat([b["pixel_values"] for b in image_loader])
    tiny_cnn.eval()
    with torch.no_grad():
        h = x
        for block in tiny_cnn.blocks:
            h = block(h)
        expected = tiny_cnn.pool(h).flatten(1).numpy()
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)
    tiny_cnn.train()
    # Eval mode during extraction: BatchNorm statistics did not move; the mode was restored.
    assert all(torch.equal(stats[n], b) for n, b in tiny_cnn.named_buffers())
    assert all(p.grad is None for p in tiny_cnn.parameters())


def test_text_features_mean_pool_and_do_not_depend_on_padding(tokenizer):
    torch.manual_seed(0)
    model = load_model("tiny-bert", num_classes=2)
    texts = [("a short one", 0), ("a much longer review that needs many more tokens than the first", 1)]
    together = [collate_text(texts, tokenizer)]
    alone = [collate_text([t], tokenizer) for t in texts]
    X, y = extract_features(model, together)
    X_alone = np.concatenate([extract_features(model, [b])[0] for b in alone])
    assert X.shape == (2, 32) and y.tolist() == [0, 1]
    np.testing.assert_allclose(X, X_alone, atol=1e-5)  # the padded short text gets the same vector


def test_text_features_of_the_last_layers_are_their_mean_pools_side_by_side(tokenizer):
    from ftlib.techniques.features import text_encoder

    torch.manual_seed(0)
    model = load_model("tiny-bert", num_classes=2)
    batch = collate_text([("a short one", 0), ("a much longer review than that", 1)], tokenizer)
    X, _ = extract_features(model, [batch], layers=2)
    assert X.shape == (2, 64)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        states = text_encoder(model.eval())(**inputs, output_hidden_states=True).hidden_states
    expected = torch.cat([mean_pool(states[-2], batch["attention_mask"]),
                          mean_pool(states[-1], batch["attention_mask"])], dim=1)
    np.testing.assert_allclose(X, expected.numpy(), atol=1e-5)  # order: lower layer first, last layer last
    np.testing.assert_allclose(X[:, 32:], extract_features(model, [batch])[0], atol=1e-5)
    with pytest.raises(ValueError, match="only 2 layers"):
        extract_features(model, [batch], layers=3)
    with pytest.raises(ValueError, match="positive integer"):
        extract_features(model, [batch], layers=0)


def test_feature_cache_hit_returns_identical_arrays_without_recomputing(tiny_cnn, image_loader, tmp_path):
    calls = []
    tiny_cnn.register_forward_hook(lambda *args: calls.append(1))
    key = {"model": "tiny-cnn", "dataset": "toy", "split": "train", "seed": 0}
    X1, y1 = cached_features(tiny_cnn, image_loader, cache_dir=tmp_path, key=key)
    assert len(calls) == len(image_loader)
    assert feature_cache_path(tmp_path, **key).exists()
    X2, y2 = cached_features(tiny_cnn, image_loader, cache_dir=tmp_path, key=key)
    assert len(calls) == len(image_loader)  # no new forward pass
    assert np.array_equal(X1, X2) and np.array_equal(y1, y2)
    cached_features(tiny_cnn, image_loader, cache_dir=tmp_path, key={**key, "seed": 1})
    assert len(calls) == 2 * len(image_loader)  # another key, another file
    assert feature_cache_path(tmp_path, **key) != feature_cache_path(tmp_path, **{**key, "seed": 1})


def test_fit_classifier_chooses_C_on_validation():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] > 0).astype(int)
    clf = fit_classifier(X[:150], y[:150], X[150:], y[150:], Cs=(0.001, 1.0))
    assert set(clf.val_scores_) == {0.001, 1.0}
    assert clf[-1].C == max(clf.val_scores_, key=clf.val_scores_.get)
    assert (clf.predict(X[150:]) == y[150:]).mean() > 0.9
    with pytest.raises(ValueError, match="expected X"):
        fit_classifier(X, y[:10])
    with pytest.raises(ValueError, match="Cs must be"):
        fit_classifier(X, y, X, y, Cs=(0.0,))


def test_probe_model_evaluates_once_on_held_out_test(tiny_cnn):
    train, test_loader = make_image_loader(n=96), make_image_loader(n=48, seed=2)
    X, y = extract_features(tiny_cnn, train)
    clf = fit_classifier(X, y)
    probe = ProbeModel(tiny_cnn, clf, num_classes=3)
    test = HeldOutTest(test_loader, ["a", "b", "c"])
    metrics = test.evaluate(probe)
    Xt, yt = extract_features(tiny_cnn, test_loader)
    assert metrics["accuracy"] == pytest.approx(float((clf.predict(Xt) == yt).mean()))
    with pytest.raises(RuntimeError, match="already used once"):
        test.evaluate(probe)


def test_head_inputs_feed_the_last_linear(tiny_cnn, image_loader):
    X, _ = head_inputs(tiny_cnn, image_loader)
    logits = torch.cat([tiny_cnn.eval()(b["pixel_values"]) for b in image_loader]).detach().numpy()
    np.testing.assert_allclose(X @ tiny_cnn.fc.weight.detach().numpy().T + tiny_cnn.fc.bias.detach().numpy(),
                               logits, rtol=1e-4, atol=1e-5)


def test_extract_features_bad_inputs(tiny_cnn):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        extract_features("model", [])
    with pytest.raises(TypeError, match="dicts with a 'labels' entry"):
        extract_features(tiny_cnn, [(torch.zeros(1, 3, 8, 8), torch.tensor([0]))])
    with pytest.raises(ValueError, match="no batches"):
        extract_features(tiny_cnn, [])
    with pytest.raises(ValueError, match="needs a key"):
        feature_cache_path("/tmp")
