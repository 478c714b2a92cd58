"""Checks of 03_load_weights: loading a state dict safely; top-k predictions in eval mode."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ftlib.checks._common import (BNNet, ModeSpy, CheckFailure, allclose, as_float, as_int, call, expect, quiet,
                                  same_state, state_snapshot)
from ftlib.weights import LoadReport
from ftlib.weights import load_pretrained_weights as reference_load
from ftlib.weights import top_k_classes as reference_top_k

__all__ = ["check_load_pretrained_weights", "check_top_k_classes", "check_top_k_on_photos"]


def _net(seed: int, num_classes: int = 3) -> BNNet:
    torch.manual_seed(seed)
    model = BNNet(num_classes=num_classes)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers must be copied too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model


def _keys(value, what: str) -> list[str]:
    if type(value) not in (list, tuple, set):
        raise CheckFailure(f"{what} should be a list of key names.", "list of str", type(value).__name__)
    out = []
    for k in value:
        if type(k) is not str:
            raise CheckFailure(f"{what} should hold key names (str).", "str", type(k).__name__)
        out.append(k)
    return sorted(out)


def _unpack(result):
    if type(result) is LoadReport:
        result = (result.missing, result.unexpected)
    if type(result) not in (tuple, list) or len(result) != 2:
        raise CheckFailure("load_pretrained_weights should return (missing, unexpected).", "a tuple of two lists",
                           type(result).__name__, "Return the two lists from model.load_state_dict(..., strict=False).")
    return _keys(result[0], "missing"), _keys(result[1], "unexpected")


def check_load_pretrained_weights(load_pretrained_weights, *, thorough: bool = False) -> None:
    """Copies matching tensors, reports missing/unexpected keys, refuses shape mismatches."""
    with quiet():
        # 1. Same architecture: everything loads, buffers included.
        source, target = _net(1), _net(2)
        state = {k: v.clone() for k, v in source.state_dict().items()}
        got = _unpack(call(load_pretrained_weights, target, state, name="load_pretrained_weights"))
        expect(got == ([], []), "Loading a checkpoint of the same architecture should leave nothing missing or unexpected.",
               ([], []), got)
        diff = same_state(state_snapshot(source), state_snapshot(target))
        expect(not diff, "The model's tensors do not equal the checkpoint's after loading.", "all equal",
               f"differ: {diff[:4]}", "Copy every tensor, buffers (BatchNorm running statistics) included.")

        # 2. A checkpoint without the head and with an extra tensor.
        source, target = _net(3), _net(4)
        target_before = state_snapshot(target)
        state = {k: v.clone() for k, v in source.state_dict().items() if not k.startswith("fc.")}
        state["extra.weight"] = torch.zeros(2, 2)
        keys_before = sorted(state)
        got = _unpack(call(load_pretrained_weights, target, state, name="load_pretrained_weights"))
        want = _unpack(reference_load(_net(4), dict(state)))
        expect(got == want, "Wrong (missing, unexpected) for a checkpoint without the head and with one extra tensor.",
               want, got, "missing: the model's keys with no value in the checkpoint; unexpected: the reverse.")
        expect(sorted(state) == keys_before, "load_pretrained_weights modified the state dict it was given.",
               keys_before, sorted(state), "Do not pop or add keys on the caller's dict; build a new one if needed.")
        after = state_snapshot(target)
        expect(not same_state({k: v for k, v in after.items() if k.startswith("fc.")},
                              {k: v for k, v in target_before.items() if k.startswith("fc.")}),
               "The head, absent from the checkpoint, should keep its own values.")

        # 3. A head of the wrong size: refuse, and load nothing.
        source, target = _net(5, num_classes=10), _net(6, num_classes=3)
        before = state_snapshot(target)
        state = dict(source.state_dict())
        try:
            load_pretrained_weights(target, state)
        except NotImplementedError:
            raise CheckFailure("load_pretrained_weights is not implemented yet.",
                               hint="Replace `raise NotImplementedError()` with your code.") from None
        except ValueError as err:
            message = str(err)
            expect("fc.weight" in message, "The ValueError should name the mismatched tensor.",
                   "a message containing 'fc.weight' and both shapes", message)
        except Exception as err:
            raise CheckFailure("A shape mismatch should raise ValueError before anything is loaded.", "ValueError",
                               f"{type(err).__name__}: {err}",
                               "Compare shapes of common keys first; load_state_dict(strict=False) still raises "
                               "RuntimeError on sizes, and only after copying the matching tensors.") from None
        else:
            raise CheckFailure("A checkpoint with a 10-class head was loaded into a 3-class model without error.",
                               "ValueError naming fc.weight and both shapes", "no error")
        changed = same_state(before, state_snapshot(target))
        expect(not changed, "After refusing a shape mismatch, the model must be unchanged.", "no tensor changed",
               f"changed: {changed[:4]}", "Check every shape before copying anything.")


def _pairs(result, n: int, k: int, named: bool):
    if type(result) not in (list, tuple) or len(result) != n:
        raise CheckFailure("top_k_classes should return one list per image.", f"a list of {n} lists",
                           f"{type(result).__name__}" + (f" of length {len(result)}" if type(result) in (list, tuple) else ""))
    out = []
    for row in result:
        if type(row) not in (list, tuple) or len(row) != k:
            raise CheckFailure(f"Each image should get k={k} (class, probability) pairs.", k,
                               len(row) if type(row) in (list, tuple) else type(row).__name__)
        pairs = []
        for pair in row:
            if type(pair) not in (list, tuple) or len(pair) != 2:
                raise CheckFailure("Each entry should be a (class, probability) pair.", "(class, probability)", repr(pair))
            cls = pair[0] if named and type(pair[0]) is str else as_int(pair[0], "a class index")
            pairs.append((cls, as_float(pair[1], "a probability")))
        out.append(pairs)
    return out


def _compare(got, want, label):
    for i, (g, w) in enumerate(zip(got, want)):
        expect([c for c, _ in g] == [c for c, _ in w], f"Wrong classes for image {i} ({label}).",
               [c for c, _ in w], [c for c, _ in g],
               "Softmax over the logits of the model in eval mode, then topk (largest first).")
        expect(allclose(np.array([p for _, p in g]), np.array([p for _, p in w]), rtol=1e-4, atol=1e-5),
               f"Wrong probabilities for image {i} ({label}).", [round(p, 5) for _, p in w],
               [round(p, 5) for _, p in g], "Probabilities come from softmax over the class dimension.")


def check_top_k_classes(top_k_classes, *, thorough: bool = False) -> None:
    """Eval mode, no gradients, mode restored, model untouched, correct top-k."""
    with quiet():
        for start_training in ((True, False) if thorough else (True,)):
            model = _net(7, num_classes=6)
            model.train(start_training)
            spy = ModeSpy(model).train(start_training)
            before = state_snapshot(model)
            images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
            images_before = images.clone()
            result = call(top_k_classes, spy, images, 3, name="top_k_classes")
            got = _pairs(result, 4, 3, named=False)
            expect(bool(spy.calls), "top_k_classes never called the model.")
            expect(not any(training for training, _ in spy.calls),
                   "The model ran in train mode: dropout was active and BatchNorm used batch statistics.",
                   "model.eval() before predicting", "train mode",
                   "Call model.eval() first (and restore the previous mode afterwards).")
            expect(not any(grad for _, grad in spy.calls), "Gradients were being recorded during prediction.",
                   "torch.no_grad()", "grad enabled", "Wrap the forward pass in `with torch.no_grad():`.")
            expect(spy.training == start_training and model.training == start_training,
                   "top_k_classes did not restore the model's previous mode.",
                   "train" if start_training else "eval", "train" if model.training else "eval",
                   "Remember was_training = model.training and call model.train(was_training) at the end.")
            changed = same_state(before, state_snapshot(model))
            expect(not changed, "Predicting changed the model's state.", "no change", f"changed: {changed[:4]}",
                   "In train mode BatchNorm updates its running statistics: predict in eval mode.")
            expect(bool(torch.equal(images, images_before)), "top_k_classes modified the images.")
            reference_model = _net(7, num_classes=6)
            want = reference_top_k(reference_model, images_before, 3)
            _compare(got, want, "k=3")
        names = [f"class{i}" for i in range(6)]
        model = _net(8, num_classes=6)
        got = _pairs(call(top_k_classes, model, images_before, 2, class_names=names, name="top_k_classes"), 4, 2, True)
        want = reference_top_k(_net(8, num_classes=6), images_before, 2, names)
        _compare(got, want, "k=2 with class_names")


def check_top_k_on_photos(top_k_classes) -> None:
    """On the real sample photos, EfficientNet-Lite0 sees a palace and a daisy."""
    from ftlib.data import prepare_images
    from ftlib.models import MODELS, load_model
    from ftlib.weights import imagenet_class_names, sample_photos

    with quiet():
        model = load_model("efficientnet-lite0", num_classes=None)
        model.train()
        names, photos = sample_photos()
        side = min(photos.shape[1:3])
        top, left = (photos.shape[1] - side) // 2, (photos.shape[2] - side) // 2
        spec = MODELS["efficientnet-lite0"]
        batch = prepare_images(photos[:, top:top + side, left:left + side], 224, spec.mean, spec.std)
        result = call(top_k_classes, model, batch, 5, class_names=imagenet_class_names(), name="top_k_classes")
        got = _pairs(result, 2, 5, named=True)
        firsts = {name: row[0][0] for name, row in zip(names, got)}
        expect(firsts == {"china": "palace", "flower": "daisy"},
               "On the sample photos the pretrained EfficientNet-Lite0 should see a palace and a daisy.",
               {"china": "palace", "flower": "daisy"}, firsts,
               "Predict in eval mode: in train mode BatchNorm normalizes with the statistics of this batch of two.")
