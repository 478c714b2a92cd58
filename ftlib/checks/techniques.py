"""Checks of 08_techniques: frozen features for a scikit-learn classifier, and the L2-SP penalty.

The references are ``ftlib.techniques.features.extract_features`` and ``ftlib.techniques.l2sp.l2sp_penalty``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ftlib.checks._common import (BNNet, CheckFailure, allclose, array_equal, as_array, as_float, as_tuple, call,
                                  expect, quiet, same_state, state_snapshot, tiny_image_loader)
from ftlib.checks.remote import observe
from ftlib.techniques.features import extract_features as reference_extract_features
from ftlib.techniques.l2sp import l2sp_penalty as reference_l2sp_penalty

__all__ = ["check_extract_features", "check_l2sp_penalty", "reference_extract_features", "reference_l2sp_penalty",
           "probe_extract_features", "probe_l2sp_penalty"]

# Imported once by `ftlib check` before its grade cells fork (see grading._runner).
PRELOAD = ("transformers.models.bert.modeling_bert", "transformers.models.bert.tokenization_bert")


def _bn_net(seed: int) -> BNNet:
    torch.manual_seed(seed)
    model = BNNet(num_classes=4, p=0.5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model


def _features(fn, model, loader) -> tuple[np.ndarray, np.ndarray]:
    out = as_tuple(call(fn, model, loader, name="extract_features"), 2, "extract_features")
    return as_array(out[0], "X"), as_array(out[1], "y")


def _expect_2d(X: np.ndarray, label: str) -> None:
    expect(X.ndim == 2, f"X should be 2-D, one row per example ({label}).", "(N, D)", X.shape)


def _text_loader():
    from ftlib.data import collate_text
    from ftlib.models import load_tokenizer

    tokenizer = load_tokenizer("minilm-l6")
    texts = [("A gorgeous, witty, seductive movie.", 1), ("Dull.", 0), ("Thin plot, wooden acting.", 0),
             ("Surprisingly moving and very funny from start to end.", 1), ("Meh.", 0)]
    return [collate_text(texts[:3], tokenizer, 32), collate_text(texts[3:], tokenizer, 32)]


def _image_loader():
    return tiny_image_loader(n=20, num_classes=4, batch_size=8, seed=1)


def _text_model():
    from ftlib.models import load_model

    torch.manual_seed(0)
    return load_model("tiny-bert", num_classes=2)


_IMAGE_LABEL = "a convnet with BatchNorm and Dropout"


def probe_extract_features(extract_features, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: their features, and the mode and gradient state the head saw."""
    with quiet():
        model = _bn_net(0).train()
        before = state_snapshot(model)
        seen = []
        hook = model.fc.register_forward_pre_hook(lambda m, args: seen.append((model.training, torch.is_grad_enabled())))
        try:
            X, y = _features(extract_features, model, _image_loader())
        finally:
            hook.remove()
        image = {"X": X, "y": y, "seen": [[bool(t), bool(g)] for t, g in seen], "training": bool(model.training),
                 "changed": same_state(before, state_snapshot(model))}
        X, y = _features(extract_features, _text_model(), _text_loader())
        return {"image": image, "text": {"X": X, "y": y}}


def check_extract_features(extract_features, *, thorough: bool = False) -> None:
    """Eval mode, no gradients, mode restored; image features = what the head sees; text = mean pooling."""
    observed = observe(probe_extract_features, extract_features, thorough=thorough)
    with quiet():
        got = observed["image"]
        X, y, seen = got["X"], got["y"], got["seen"]
        _expect_2d(X, _IMAGE_LABEL)
        expect(not any(t for t, _ in seen), "The backbone ran in train mode.", "eval mode", "train mode",
               "model.eval() first: Dropout must be off and BatchNorm must use its pretrained statistics.")
        expect(not any(g for _, g in seen), "Gradients were recorded during feature extraction.", "torch.no_grad()",
               "grad enabled")
        expect(got["training"], "extract_features did not restore the model's train mode.", "train", "eval")
        changed = got["changed"]
        expect(not changed, "Extracting features changed the model.", "no change", changed[:4])
        X_ref, y_ref = reference_extract_features(_bn_net(0), _image_loader())
        expect(X.shape == X_ref.shape, "Wrong feature shape for images.", X_ref.shape, X.shape,
               "One row per example, and the row is what the head receives: the pooled, flattened features.")
        expect(allclose(X, X_ref, rtol=1e-4, atol=1e-5), "Image features differ from the head's inputs.",
               f"mean {X_ref.mean():.4f}", f"mean {X.mean():.4f}",
               "Capture the head's input with head.register_forward_pre_hook, in eval mode.")
        expect(array_equal(y.astype(np.int64), y_ref), "y should be the labels, in loader order.", y_ref.tolist(),
               y.tolist())
        # Text: the same function must mean-pool a transformer's token states.
        X, y = observed["text"]["X"], observed["text"]["y"]
        _expect_2d(X, "tiny BERT")
        X_ref, y_ref = reference_extract_features(_text_model(), _text_loader())
        expect(X.shape == X_ref.shape, "Wrong feature shape for text.", X_ref.shape, X.shape,
               "One row per text: the last layer's token states averaged over real tokens (hidden size 32 here).")
        expect(allclose(X, X_ref, rtol=1e-4, atol=1e-5), "Text features are not the mean-pooled token states.",
               f"mean {X_ref.mean():.4f}", f"mean {X.mean():.4f}",
               "Average last_hidden_state over positions where attention_mask is 1 (padding excluded): "
               "mean_pool(text_encoder(model)(**inputs).last_hidden_state, mask), both from "
               "ftlib.techniques.features.")
        expect(array_equal(y.astype(np.int64), y_ref), "y should be the text labels, in loader order.",
               y_ref.tolist(), y.tolist())


def _l2sp_cases(thorough: bool) -> list[tuple[int, float]]:
    # (seed, alpha)
    return [(0, 0.1), (1, 0.01)] + ([(2, 1.0)] if thorough else [])


def _perturb(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def probe_l2sp_penalty(l2sp_penalty, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their penalty at and away from the pretrained weights, and its gradients."""
    with quiet():
        observed = []
        for seed, alpha in _l2sp_cases(thorough):
            model = _bn_net(seed)
            w0 = {k: v.detach().clone() for k, v in model.named_parameters()}  # head included: must be ignored
            zero = as_float(call(l2sp_penalty, model, dict(w0), alpha, name="l2sp_penalty"), "the penalty")
            _perturb(model, seed)
            w0_before = {k: v.clone() for k, v in w0.items()}
            penalty = call(l2sp_penalty, model, w0, alpha, name="l2sp_penalty")
            case = {"zero": zero, "scalar_tensor": isinstance(penalty, torch.Tensor) and penalty.numel() == 1,
                    "type": type(penalty).__name__}
            observed.append(case)
            if not case["scalar_tensor"]:
                break  # the check stops here
            case["value"] = as_float(penalty, "the penalty")
            case["requires_grad"] = bool(penalty.requires_grad)
            if case["requires_grad"]:
                model.zero_grad()
                penalty.backward()
                case["grads"] = {name: as_array(p.grad if p.grad is not None else torch.zeros_like(p), "grad")
                                 for name, p in model.named_parameters()}
            case["pretrained_modified"] = not all(torch.equal(w0[k], w0_before[k]) for k in w0)
        return observed


def check_l2sp_penalty(l2sp_penalty, *, thorough: bool = False) -> None:
    """``alpha / 2 * sum ||w - w0||^2`` over the backbone: value, gradient, head excluded."""
    observed = observe(probe_l2sp_penalty, l2sp_penalty, thorough=thorough)
    with quiet():
        for i, (seed, alpha) in enumerate(_l2sp_cases(thorough)):
            got = observed[i]  # the probe stops after a case the check rejects
            zero = got["zero"]
            expect(abs(zero) < 1e-12, "The penalty should be 0 at the pretrained weights.", 0.0, zero)
            expect(got["scalar_tensor"], "l2sp_penalty should return a scalar tensor (it is added to the loss).",
                   "0-d torch.Tensor", got["type"])
            model = _bn_net(seed)
            w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
            _perturb(model, seed)
            value = got["value"]
            want = float(reference_l2sp_penalty(model, w0, alpha))
            head_sq = sum(float((p - w0[n]).pow(2).sum()) for n, p in model.named_parameters() if n.startswith("fc."))
            if not math.isclose(value, want, rel_tol=1e-5):
                hint = "alpha / 2 times the sum over backbone parameters of (w - w0)^2."
                if math.isclose(value, want + 0.5 * alpha * head_sq, rel_tol=1e-5):
                    hint = "The head is included: it is new, so it has no pretrained value to return to. " + hint
                elif math.isclose(value, 2 * want, rel_tol=1e-5):
                    hint = "Off by a factor 2: the penalty is alpha / 2 * ... " + hint
                raise CheckFailure(f"Wrong penalty value (alpha={alpha}).", f"{want:.6f}", f"{value:.6f}", hint)
            expect(got["requires_grad"], "The penalty must be differentiable: it is added to the loss.",
                   "a tensor with requires_grad=True", "a detached value",
                   "Compute it with torch operations on the parameters; no .item(), .detach() or torch.no_grad().")
            grads = got["grads"]
            for name, p in model.named_parameters():
                grad = grads.get(name)
                expect(grad is not None and grad.shape == tuple(p.shape), f"Wrong gradient for {name}.",
                       "alpha * (w - w0)", "something else")
                if name.startswith("fc."):
                    expect(float(np.abs(grad).max()) == 0.0, f"The penalty pushes the head ({name}).", "no gradient",
                           "a gradient", "Leave the head out of the sum.")
                else:
                    expected = alpha * (p.detach() - w0[name])
                    expect(allclose(grad, as_array(expected, "expected"), rtol=1e-4, atol=1e-7),
                           f"Wrong gradient for {name}.", "alpha * (w - w0)", "something else")
            expect(not got["pretrained_modified"], "l2sp_penalty modified pretrained_state.")
