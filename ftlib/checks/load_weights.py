"""Checks of 03_load_weights: loading a state dict safely; top-k predictions in eval mode."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ftlib.checks._common import (error_text, BNNet, ModeSpy, CheckFailure, allclose, array_equal, as_array, as_float, as_int,
                                  call, expect, quiet, same_state, state_snapshot)
from ftlib.checks.remote import observe
from ftlib.weights import LoadReport
from ftlib.weights import load_pretrained_weights as reference_load
from ftlib.weights import top_k_classes as reference_top_k

__all__ = ["check_load_pretrained_weights", "check_top_k_classes", "check_top_k_on_photos",
           "probe_load_pretrained_weights", "probe_top_k_classes", "probe_top_k_on_photos"]


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


def _without_head(source: BNNet) -> dict:
    state = {k: v.clone() for k, v in source.state_dict().items() if not k.startswith("fc.")}
    state["extra.weight"] = torch.zeros(2, 2)
    return state


def probe_load_pretrained_weights(load_pretrained_weights, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: the keys they report, the model's tensors after loading, what they raised."""
    with quiet():
        # 1. Same architecture: everything loads, buffers included.
        source, target = _net(1), _net(2)
        state = {k: v.clone() for k, v in source.state_dict().items()}
        same = _unpack(call(load_pretrained_weights, target, state, name="load_pretrained_weights"))
        same_after = state_snapshot(target)

        # 2. A checkpoint without the head and with an extra tensor.
        target = _net(4)
        state = _without_head(_net(3))
        headless = _unpack(call(load_pretrained_weights, target, state, name="load_pretrained_weights"))
        headless_keys_after, headless_after = sorted(state), state_snapshot(target)

        # 3. A head of the wrong size: refuse, and load nothing.
        source, target = _net(5, num_classes=10), _net(6, num_classes=3)
        state = dict(source.state_dict())
        raised = None
        try:
            load_pretrained_weights(target, state)
        except NotImplementedError:
            raised = {"kind": "not implemented"}
        except ValueError as err:
            raised = {"kind": "ValueError", "message": error_text(err)}
        except Exception as err:
            raised = {"kind": "other", "found": f"{type(err).__name__}: {error_text(err)}"}
        return {"same": same, "same_after": same_after, "headless": headless,
                "headless_keys_after": headless_keys_after, "headless_after": headless_after,
                "mismatch_raised": raised, "mismatch_after": state_snapshot(target)}


def check_load_pretrained_weights(load_pretrained_weights, *, thorough: bool = False) -> None:
    """Copies matching tensors, reports missing/unexpected keys, refuses shape mismatches."""
    observed = observe(probe_load_pretrained_weights, load_pretrained_weights, thorough=thorough)
    with quiet():
        # 1. Same architecture: everything loads, buffers included.
        got = observed["same"]
        expect(got == ([], []), "Loading a checkpoint of the same architecture should leave nothing missing or unexpected.",
               ([], []), got)
        diff = same_state(state_snapshot(_net(1)), observed["same_after"])
        expect(not diff, "The model's tensors do not equal the checkpoint's after loading.", "all equal",
               f"differ: {diff[:4]}", "Copy every tensor, buffers (BatchNorm running statistics) included.")

        # 2. A checkpoint without the head and with an extra tensor.
        target_before = state_snapshot(_net(4))
        state = _without_head(_net(3))
        keys_before = sorted(state)
        got = observed["headless"]
        want = _unpack(reference_load(_net(4), dict(state)))
        expect(got == want, "Wrong (missing, unexpected) for a checkpoint without the head and with one extra tensor.",
               want, got, "missing: the model's keys with no value in the checkpoint; unexpected: the reverse.")
        expect(observed["headless_keys_after"] == keys_before,
               "load_pretrained_weights modified the state dict it was given.",
               keys_before, observed["headless_keys_after"],
               "Do not pop or add keys on the caller's dict; build a new one if needed.")
        after = observed["headless_after"]
        expect(not same_state({k: v for k, v in after.items() if k.startswith("fc.")},
                              {k: v for k, v in target_before.items() if k.startswith("fc.")}),
               "The head, absent from the checkpoint, should keep its own values.")

        # 3. A head of the wrong size: refuse, and load nothing.
        raised = observed["mismatch_raised"]
        if raised is None:
            raise CheckFailure("A checkpoint with a 10-class head was loaded into a 3-class model without error.",
                               "ValueError naming fc.weight and both shapes", "no error")
        if raised["kind"] == "not implemented":
            raise CheckFailure("load_pretrained_weights is not implemented yet.",
                               hint="Replace `raise NotImplementedError()` with your code.")
        if raised["kind"] == "ValueError":
            message = raised["message"]
            expect(type(message) is str and "fc.weight" in message, "The ValueError should name the mismatched tensor.",
                   "a message containing 'fc.weight' and both shapes", message)
        else:
            raise CheckFailure("A shape mismatch should raise ValueError before anything is loaded.", "ValueError",
                               raised["found"],
                               "Compare shapes of common keys first; load_state_dict(strict=False) still raises "
                               "RuntimeError on sizes, and only after copying the matching tensors.")
        changed = same_state(state_snapshot(_net(6, num_classes=3)), observed["mismatch_after"])
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


def _top_k_images() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _top_k_modes(thorough: bool) -> tuple[bool, ...]:
    return (True, False) if thorough else (True,)


_CLASS_NAMES = [f"class{i}" for i in range(6)]


def probe_top_k_classes(top_k_classes, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: their pairs, the mode of each forward call, the model and images after."""
    with quiet():
        observed = {"by_mode": []}
        for start_training in _top_k_modes(thorough):
            model = _net(7, num_classes=6)
            model.train(start_training)
            spy = ModeSpy(model).train(start_training)
            images = _top_k_images()
            result = call(top_k_classes, spy, images, 3, name="top_k_classes")
            observed["by_mode"].append({"pairs": _pairs(result, 4, 3, named=False),
                                        "calls": [list(c) for c in spy.calls], "spy_training": spy.training,
                                        "training": model.training, "state": state_snapshot(model),
                                        "images": as_array(images, "the images")})
        model = _net(8, num_classes=6)
        result = call(top_k_classes, model, _top_k_images(), 2, class_names=list(_CLASS_NAMES), name="top_k_classes")
        observed["named"] = _pairs(result, 4, 2, named=True)
        return observed


def check_top_k_classes(top_k_classes, *, thorough: bool = False) -> None:
    """Eval mode, no gradients, mode restored, model untouched, correct top-k."""
    observed = observe(probe_top_k_classes, top_k_classes, thorough=thorough)
    with quiet():
        images = _top_k_images()
        for start_training, got in zip(_top_k_modes(thorough), observed["by_mode"], strict=True):
            calls = got["calls"]
            expect(bool(calls), "top_k_classes never called the model.")
            expect(not any(training for training, _ in calls),
                   "The model ran in train mode: dropout was active and BatchNorm used batch statistics.",
                   "model.eval() before predicting", "train mode",
                   "Call model.eval() first (and restore the previous mode afterwards).")
            expect(not any(grad for _, grad in calls), "Gradients were being recorded during prediction.",
                   "torch.no_grad()", "grad enabled", "Wrap the forward pass in `with torch.no_grad():`.")
            expect(got["spy_training"] == start_training and got["training"] == start_training,
                   "top_k_classes did not restore the model's previous mode.",
                   "train" if start_training else "eval", "train" if got["training"] else "eval",
                   "Remember was_training = model.training and call model.train(was_training) at the end.")
            changed = same_state(state_snapshot(_net(7, num_classes=6)), got["state"])
            expect(not changed, "Predicting changed the model's state.", "no change", f"changed: {changed[:4]}",
                   "In train mode BatchNorm updates its running statistics: predict in eval mode.")
            expect(array_equal(as_array(got["images"], "the images"), as_array(images, "the images")),
                   "top_k_classes modified the images.")
            want = reference_top_k(_net(7, num_classes=6), images, 3)
            _compare(got["pairs"], want, "k=3")
        want = reference_top_k(_net(8, num_classes=6), images, 2, list(_CLASS_NAMES))
        _compare(observed["named"], want, "k=2 with class_names")


def _photo_batch():
    """EfficientNet-Lite0 in train mode, and the two sample photos, centre-cropped and prepared for it."""
    from ftlib.data import prepare_images
    from ftlib.models import MODELS, load_model
    from ftlib.weights import sample_photos

    model = load_model("efficientnet-lite0", num_classes=None)
    model.train()
    _names, photos = sample_photos()
    side = min(photos.shape[1:3])
    top, left = (photos.shape[1] - side) // 2, (photos.shape[2] - side) // 2
    spec = MODELS["efficientnet-lite0"]
    return model, prepare_images(photos[:, top:top + side, left:left + side], 224, spec.mean, spec.std)


def probe_top_k_on_photos(top_k_classes, *, thorough: bool = False) -> list[list[tuple]]:
    """Where the learner's code runs: their top 5 of EfficientNet-Lite0 on the sample photos (no thorough variant)."""
    from ftlib.weights import imagenet_class_names

    with quiet():
        model, batch = _photo_batch()
        result = call(top_k_classes, model, batch, 5, class_names=imagenet_class_names(), name="top_k_classes")
        return _pairs(result, 2, 5, named=True)


def check_top_k_on_photos(top_k_classes) -> None:
    """On the real sample photos, EfficientNet-Lite0 sees a palace and a daisy."""
    from ftlib.weights import sample_photos

    got = observe(probe_top_k_on_photos, top_k_classes)
    with quiet():
        names, _photos = sample_photos()
        expect(type(got) is list and len(got) == len(names), "top_k_classes should return one list per image.",
               f"a list of {len(names)} lists", type(got).__name__)
        firsts = {name: row[0][0] for name, row in zip(names, got)}
        expect(firsts == {"china": "palace", "flower": "daisy"},
               "On the sample photos the pretrained EfficientNet-Lite0 should see a palace and a daisy.",
               {"china": "palace", "flower": "daisy"}, firsts,
               "Predict in eval mode: in train mode BatchNorm normalizes with the statistics of this batch of two.")
