"""Checks of 02_prepare_data: stratified, grouped splits; image normalization; text batches."""
from __future__ import annotations

import numpy as np
import torch

from ftlib.checks._common import (CheckFailure, allclose, array_equal, as_array, as_tuple, call, expect,
                                  quiet)
from ftlib.checks.remote import observe
from ftlib.data import collate_text as reference_collate_text
from ftlib.data import prepare_images as reference_prepare_images

__all__ = ["check_stratified_split", "check_prepare_images", "check_collate_text", "probe_stratified_split",
           "probe_prepare_images", "probe_collate_text"]

# Imported once by `ftlib check` before its grade cells fork (see grading._runner).
PRELOAD = ("transformers.models.bert.tokenization_bert",)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _parts(out) -> list[np.ndarray]:
    parts = []
    for name, idx in zip(("train", "val", "test"), out):
        arr = as_array(idx, f"the {name} indices")
        expect(arr.ndim == 1 and (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)),
               f"The {name} indices should be a 1-D array of integers.", "int array", f"{arr.dtype}, shape {arr.shape}",
               "Return index arrays such as np.flatnonzero(mask), not masks or labels.")
        parts.append(arr.astype(np.int64))
    return parts


def _split(fn, labels, val, test, seed, groups=None):
    kwargs = {} if groups is None else {"groups": list(groups)}
    out = as_tuple(call(fn, list(labels), val, test, seed, name="stratified_split", **kwargs), 3,
                   "stratified_split")
    return _parts(out)


def _received(parts) -> list[np.ndarray]:
    """The three index arrays a probe sent, checked again here: 1-D integer arrays."""
    return _parts(as_tuple(parts, 3, "stratified_split"))


def _check_partition(parts, n, label):
    joined = np.concatenate(parts)
    counts = np.bincount(joined, minlength=n) if joined.size and joined.min() >= 0 else None
    expect(counts is not None and len(counts) == n and bool((counts == 1).all()),
           f"The three splits must cover every index exactly once ({label}).",
           f"each of 0..{n - 1} in exactly one split",
           "overlaps or gaps: " + ("negative index" if counts is None else
                                   f"{int((counts > 1).sum())} indices in two splits (leakage), "
                                   f"{int((counts == 0).sum())} in none, {max(0, len(counts) - n)} out of range"),
           "An example in both train and test leaks; an example in none is wasted.")


def _check_stratified(parts, labels, fractions, label):
    labels = np.asarray(labels)
    for name, idx, fraction in zip(("val", "test"), parts[1:], fractions):
        for c in np.unique(labels):
            n_c = int((labels == c).sum())
            got = int((labels[idx] == c).sum())
            want = fraction * n_c
            expect(abs(got - want) <= 1.0 + 1e-9,
                   f"The {name} split is not stratified ({label}): class {int(c)} has {n_c} examples, "
                   f"so {name} should hold about {want:.1f} of them.", f"{want:.1f} (+/- 1)", got,
                   "Shuffle and cut each class separately, so every split keeps the class proportions.")


def _split_labels() -> list[int]:
    rng = np.random.default_rng(123)
    return rng.permutation(np.repeat([0, 1, 2], [600, 300, 100])).tolist()


def _grouped_split_inputs() -> tuple[np.ndarray, np.ndarray]:
    # Groups: reviews of one movie must stay in one split.
    g_rng = np.random.default_rng(7)
    group_labels = g_rng.integers(0, 2, size=120)
    sizes = g_rng.integers(1, 6, size=120)
    labels_g = np.repeat(group_labels, sizes)
    groups = np.repeat([f"movie{i}" for i in range(120)], sizes)
    order = g_rng.permutation(len(labels_g))
    return labels_g[order], groups[order]


def _split_seeds(thorough: bool) -> tuple[int, ...]:
    return (0, 1, 2) if thorough else (0, 1)


def probe_stratified_split(stratified_split, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: their splits (as index arrays) and whether the labels were kept."""
    labels = _split_labels()
    original = list(labels)
    with quiet():
        by_seed = []
        for seed in _split_seeds(thorough):
            # The learner's function gets the very list whose contents are compared afterwards.
            out = as_tuple(call(stratified_split, labels, 0.1, 0.2, seed, name="stratified_split"), 3,
                           "stratified_split")
            by_seed.append({"parts": _parts(out), "labels_kept": labels == original})
            labels[:] = original  # the next calls get the labels as they were
        again = _split(stratified_split, original, 0.1, 0.2, 0)
        first = _split(stratified_split, original, 0.1, 0.2, 0)
        other = _split(stratified_split, original, 0.1, 0.2, 1)
        quarters = _split(stratified_split, original, 0.25, 0.25, 5)
        labels_g, groups = _grouped_split_inputs()
        grouped = _split(stratified_split, labels_g.tolist(), 0.2, 0.2, 0, groups=groups)
        return {"by_seed": by_seed, "again": again, "first": first, "other": other, "quarters": quarters,
                "grouped": grouped}


def check_stratified_split(stratified_split, *, thorough: bool = False) -> None:
    """Partition, stratification, seeding and groups of ``stratified_split``."""
    observed = observe(probe_stratified_split, stratified_split, thorough=thorough)
    labels = _split_labels()
    with quiet():
        for seed, got in zip(_split_seeds(thorough), observed["by_seed"], strict=True):
            parts = _received(got["parts"])
            expect(got["labels_kept"], "stratified_split modified the labels it was given.",
                   hint="Work on a copy (np.asarray(labels) then index) instead of shuffling in place.")
            _check_partition(parts, len(labels), f"seed {seed}")
            _check_stratified(parts, labels, (0.1, 0.2), f"seed {seed}, fractions 0.1 / 0.2")
        again, first = _received(observed["again"]), _received(observed["first"])
        expect(all(array_equal(np.sort(a), np.sort(b)) for a, b in zip(again, first)),
               "Two calls with the same seed gave different splits.",
               hint="Draw all randomness from np.random.default_rng(seed), not the global generator.")
        other = _received(observed["other"])
        expect(not array_equal(np.sort(other[2]), np.sort(first[2])),
               "Seeds 0 and 1 gave the same test split.", hint="Use the seed to shuffle.")
        parts = _received(observed["quarters"])
        _check_partition(parts, len(labels), "fractions 0.25 / 0.25")
        _check_stratified(parts, labels, (0.25, 0.25), "fractions 0.25 / 0.25")

        # Groups: reviews of one movie must stay in one split.
        labels_g, groups = _grouped_split_inputs()
        parts = _received(observed["grouped"])
        _check_partition(parts, len(labels_g), "with groups")
        where = {}
        for k, idx in enumerate(parts):
            for g in set(groups[idx].tolist()):
                where.setdefault(g, set()).add(k)
        split_groups = sorted(g for g, ks in where.items() if len(ks) > 1)
        expect(not split_groups, "With groups, a group must never be split across two sets.",
               "every movie in exactly one split", f"{len(split_groups)} groups split, e.g. {split_groups[:3]}",
               "Assign whole groups to splits (np.unique(groups, return_inverse=True)), then map back to examples.")
        n = len(labels_g)
        for name, idx, fraction in zip(("val", "test"), parts[1:], (0.2, 0.2)):
            expect(abs(len(idx) / n - fraction) < 0.06,
                   f"With groups, the {name} split should still hold about {fraction:.0%} of the examples.",
                   f"{fraction * n:.0f}", len(idx), "Cut at cumulative example counts, not group counts.")


def _image_cases(thorough: bool):
    rng = np.random.default_rng(0)
    yield ("grey uint8 (4, 28, 28) to 32 px, ImageNet statistics",
           rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8), 32, IMAGENET_MEAN, IMAGENET_STD)
    yield ("colour uint8 channels-last (2, 20, 30, 3) to 32 px, mean=std=0.5",
           rng.integers(0, 256, size=(2, 20, 30, 3), dtype=np.uint8), 32, (0.5,) * 3, (0.5,) * 3)
    yield ("float tensor in [0, 1] (3, 3, 16, 16), no resize",
           torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1)), 16, (0.2, 0.4, 0.6), (0.3, 0.2, 0.1))
    if thorough:
        yield ("grey uint8 (1, 64, 64) down to 32 px",
               rng.integers(0, 256, size=(1, 64, 64), dtype=np.uint8), 32, (0.1, 0.2, 0.3), (0.9, 0.8, 0.7))


def probe_prepare_images(prepare_images, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their output (as an array, with its dtype) and whether the input changed."""
    with quiet():
        observed = []
        for label, images, size, mean, std in _image_cases(thorough):
            before = images.clone() if isinstance(images, torch.Tensor) else images.copy()
            got = call(prepare_images, images, size, mean, std, name="prepare_images")
            expect(isinstance(got, torch.Tensor), f"prepare_images should return a torch.Tensor ({label}).",
                   "torch.Tensor", type(got).__name__)
            observed.append({"values": as_array(got, "prepare_images' result"), "dtype": str(got.dtype),
                             "input_kept": array_equal(as_array(images, "the input"), as_array(before, "the input"))})
        return observed


def check_prepare_images(prepare_images, *, thorough: bool = False) -> None:
    """Shape, dtype, scaling, channels, resizing and normalization of ``prepare_images``."""
    observed = observe(probe_prepare_images, prepare_images, thorough=thorough)
    with quiet():
        for (label, images, size, mean, std), got in zip(_image_cases(thorough), observed, strict=True):
            want = reference_prepare_images(images, size, mean, std)
            got_np = as_array(got["values"], "prepare_images' result")
            expect(got["input_kept"], f"prepare_images modified its input ({label}).",
                   hint="Build a new tensor (x = torch.as_tensor(...).float()) instead of editing in place.")
            expect(tuple(got_np.shape) == tuple(want.shape), f"Wrong output shape for {label}.",
                   tuple(want.shape), tuple(got_np.shape),
                   "Output is (N, 3, size, size): grey images repeat to 3 channels, channels-last moves first.")
            expect(got["dtype"] == str(torch.float32), f"Wrong dtype for {label}.", "torch.float32", got["dtype"])
            want_np = want.numpy()
            if not allclose(got_np, want_np, rtol=1e-4, atol=1e-4):
                diff = float(np.abs(got_np - want_np).max())
                hint = ("Scale uint8 to [0, 1] by dividing by 255 first; resize with F.interpolate(mode='bilinear', "
                        "align_corners=False); then subtract the given mean and divide by the given std per channel.")
                if abs(float(got_np.mean()) - float(want_np.mean())) > 0.2:
                    hint = "The overall level is off: check the division by 255 and that you use the mean/std passed in. " + hint
                raise CheckFailure(f"Values differ from the reference for {label} (max abs difference {diff:.4f}).",
                                   f"mean {want_np.mean():.4f}, std {want_np.std():.4f}",
                                   f"mean {got_np.mean():.4f}, std {got_np.std():.4f}", hint)


_TEXTS = [
    ("A gorgeous, witty, seductive movie.", 1),
    ("Dull.", 0),
    ("The plot is thin, the acting wooden and the jokes fall flat one after another for two long hours.", 0),
    ("Surprisingly moving.", 1),
]


def _text_batches(thorough: bool) -> list[tuple[list, int]]:
    batches = [(list(_TEXTS), 64), (list(_TEXTS), 12), ([_TEXTS[1], _TEXTS[3]], 64)]
    return batches + ([([_TEXTS[2]], 8)] if thorough else [])


def probe_collate_text(collate_text, *, thorough: bool = False, tokenizer=None) -> list[dict]:
    """Where the learner's code runs: their batch's keys and tensors (as arrays), and whether the batch was kept.

    ``tokenizer`` (an object, so only where the learner's function is called in this
    process) replaces MiniLM's.
    """
    from ftlib.models import load_tokenizer

    with quiet():
        tokenizer = tokenizer or load_tokenizer("minilm-l6")
        observed = []
        for batch, max_length in _text_batches(thorough):
            before = list(batch)
            got = call(collate_text, batch, tokenizer, max_length, name="collate_text")
            expect(isinstance(got, dict), "collate_text should return a dict.", "dict", type(got).__name__,
                   "Return dict(encoded) plus a 'labels' entry.")
            missing = [k for k in ("input_ids", "attention_mask", "labels") if k not in got]
            seen = {"missing": missing, "keys": sorted(map(str, got)), "batch_kept": batch == before}
            if not missing:
                labels = got["labels"]
                long_labels = isinstance(labels, torch.Tensor) and labels.dtype == torch.long
                seen.update(input_ids=as_array(got["input_ids"], "input_ids"),
                            attention_mask=as_array(got["attention_mask"], "attention_mask"),
                            long_labels=long_labels,
                            labels_found=f"{type(labels).__name__} {getattr(labels, 'dtype', '')}",
                            labels=as_array(labels, "labels") if long_labels else None)
            observed.append(seen)
        return observed


def check_collate_text(collate_text, *, thorough: bool = False, tokenizer=None) -> None:
    """Keys, dynamic padding, truncation and labels of ``collate_text``."""
    from ftlib.models import load_tokenizer

    mine = {} if tokenizer is None else {"tokenizer": tokenizer}
    observed = observe(probe_collate_text, collate_text, thorough=thorough, **mine)
    with quiet():
        tokenizer = tokenizer or load_tokenizer("minilm-l6")
        for (batch, max_length), got in zip(_text_batches(thorough), observed, strict=True):
            want = reference_collate_text(batch, tokenizer, max_length)
            label = f"{len(batch)} texts, max_length={max_length}"
            missing = got["missing"]
            expect(not missing, f"collate_text's dict lacks {missing}.", "input_ids, attention_mask, labels",
                   got["keys"])
            expect(got["batch_kept"], "collate_text modified the batch it was given.")
            ids = as_array(got["input_ids"], "input_ids")
            width = want["input_ids"].shape[1]
            expect(ids.ndim == 2 and ids.shape[0] == len(batch), f"input_ids should be (batch, length) ({label}).",
                   (len(batch), width), ids.shape)
            expect(ids.shape[1] <= max_length, f"Texts were not truncated to max_length ({label}).",
                   f"at most {max_length} tokens", ids.shape[1], "Pass truncation=True, max_length=max_length.")
            expect(ids.shape[1] == width, f"Padding is not dynamic ({label}).",
                   f"{width} tokens (the longest text of this batch)", f"{ids.shape[1]} tokens",
                   "Use padding='longest' (or True), not padding='max_length': short batches should stay short.")
            expect(array_equal(ids, want["input_ids"].numpy()), f"input_ids differ from the tokenizer's ({label}).",
                   hint="Tokenize the texts in their order with the tokenizer given.")
            expect(array_equal(as_array(got["attention_mask"], "attention_mask"), want["attention_mask"].numpy()),
                   f"attention_mask is wrong ({label}).", hint="1 for real tokens, 0 for padding: the tokenizer makes it.")
            expect(got["long_labels"],
                   "labels should be a torch.long tensor (CrossEntropyLoss needs class ids).",
                   "torch.long tensor", got["labels_found"])
            labels = as_array(got["labels"], "labels")
            expect(array_equal(labels, want["labels"].numpy()),
                   f"labels are wrong ({label}).", want["labels"].tolist(), labels.tolist())
