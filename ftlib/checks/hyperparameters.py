"""Checks of 05_hyperparameters: parameter groups, warmup + cosine, reading an LR range test."""
from __future__ import annotations

import math

import torch
from torch import nn

from ftlib.checks._common import error_text, BNNet, CheckFailure, as_float, call, expect, quiet
from ftlib.checks.remote import observe
from ftlib.optim import param_groups as reference_param_groups
from ftlib.optim import warmup_cosine as reference_warmup_cosine

__all__ = ["check_param_groups", "check_warmup_cosine", "check_lr_choice", "LR_RANGE", "probe_param_groups"]

# Imported once by `ftlib check` before its grade cells fork (see grading._runner).
PRELOAD = ("transformers.models.bert.modeling_bert",)


def _groups_as_data(groups, model: nn.Module, label: str) -> list[dict]:
    """The groups with each parameter named (None for a tensor that is not one of the model's)."""
    if type(groups) is not list or not all(type(g) is dict for g in groups):
        raise CheckFailure(f"param_groups should return a list of dicts ({label}).", "list of dict",
                           type(groups).__name__, 'Each group: {"params": [...], "lr": ..., "weight_decay": ...}.')
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for i, group in enumerate(groups):
        for key in ("params", "lr", "weight_decay"):
            expect(key in group, f"Group {i} has no {key!r} entry ({label}).", '"params", "lr", "weight_decay"',
                   sorted(map(str, group)))
        lr, wd = as_float(group["lr"], f"group {i}'s lr"), as_float(group["weight_decay"], f"group {i}'s weight_decay")
        params = group["params"]
        if type(params) not in (list, tuple):
            raise CheckFailure(f"Group {i}'s 'params' should be a list of parameters ({label}).", "list",
                               type(params).__name__)
        out.append({"lr": lr, "weight_decay": wd, "params": [names.get(id(p)) for p in params]})
    return out


def _settings(groups: list[dict], label: str) -> dict[str, tuple[float, float]]:
    """``{parameter name: (lr, weight_decay)}``, checking each parameter is the model's and in one group."""
    seen: dict[str, tuple[float, float]] = {}
    for i, group in enumerate(groups):
        for name in group["params"]:
            expect(name is not None, f"Group {i} holds a tensor that is not a parameter of the model ({label}).")
            expect(name not in seen, f"Parameter {name} is in two groups ({label}).", "exactly one group", "two",
                   "The optimizer would update it twice (torch.optim refuses it).")
            seen[name] = (group["lr"], group["weight_decay"])
    return seen


def _compare(groups: list[dict], reference_model, kwargs, label):
    got = _settings(groups, label)
    want = _settings(_groups_as_data(reference_param_groups(reference_model, **kwargs), reference_model, label), label)
    frozen = [n for n in got if n not in want]
    expect(not frozen, f"Frozen parameters should be in no group ({label}).", "none", frozen[:4],
           "Skip parameters with requires_grad=False.")
    lost = [n for n in want if n not in got]
    expect(not lost, f"Trainable parameters missing from every group ({label}).", "none", lost[:4],
           "Every trainable parameter must be in exactly one group, or it will never learn.")
    for name in want:
        glr, gwd = got[name]
        wlr, wwd = want[name]
        if not math.isclose(gwd, wwd, rel_tol=1e-9, abs_tol=1e-12):
            kind = "a bias or normalization parameter" if wwd == 0 else "a weight matrix or kernel"
            raise CheckFailure(f"Wrong weight decay for {name}, {kind} ({label}).", wwd, gwd,
                               "Decay parameters with p.ndim >= 2 only; biases and norm gains/shifts get 0.")
        if not math.isclose(glr, wlr, rel_tol=1e-6):
            raise CheckFailure(f"Wrong learning rate for {name} ({label}).", wlr, glr,
                               "Head: base_lr * head_lr_multiplier; top block: base_lr; each block below: "
                               "layer_decay times the block above (use ftlib.freezing.layer_blocks for the order).")


_KWARGS = dict(base_lr=1e-3, head_lr_multiplier=10.0, layer_decay=0.5, weight_decay=0.05)
_BERT_KWARGS = dict(base_lr=2e-5, head_lr_multiplier=5.0, layer_decay=0.95, weight_decay=0.01)
_BERT_LABEL = "tiny BERT (LayerNorm, embeddings, pooler)"


def _groups_cases() -> list[tuple[str, bool, dict]]:
    # (label, stem frozen, param_groups' arguments)
    return [("BNNet, all trainable", False, _KWARGS),
            ("BNNet, stem frozen", True, dict(_KWARGS, layer_decay=0.8)),
            ("BNNet, layer_decay=1, head_lr_multiplier=1", False,
             dict(_KWARGS, layer_decay=1.0, head_lr_multiplier=1.0))]


def _groups_model(stem_frozen: bool) -> BNNet:
    from ftlib.freezing import freeze_up_to

    torch.manual_seed(0)
    model = BNNet()
    if stem_frozen:
        freeze_up_to(model, "stem")
    return model


def _tiny_bert():
    from ftlib.models import load_model

    torch.manual_seed(0)
    return load_model("tiny-bert", num_classes=2)


def probe_param_groups(param_groups, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: their groups with each parameter named, and what AdamW made of them."""
    with quiet():
        cases = []
        for label, stem_frozen, kw in _groups_cases():
            model = _groups_model(stem_frozen)
            flags = [p.requires_grad for p in model.parameters()]
            groups = call(param_groups, model, kw["base_lr"], kw["head_lr_multiplier"], kw["layer_decay"],
                          kw["weight_decay"], name="param_groups")
            flags_changed = [p.requires_grad for p in model.parameters()] != flags
            as_data = _groups_as_data(groups, model, label)
            try:
                torch.optim.AdamW(groups)
                refused = None
            except Exception as err:
                refused = f"{type(err).__name__}: {error_text(err)}"
            cases.append({"flags_changed": flags_changed, "groups": as_data, "adamw_refused": refused})
        bert = None
        if thorough:
            model = _tiny_bert()
            kw = _BERT_KWARGS
            groups = call(param_groups, model, kw["base_lr"], kw["head_lr_multiplier"], kw["layer_decay"],
                          kw["weight_decay"], name="param_groups")
            bert = _groups_as_data(groups, model, _BERT_LABEL)
        return {"cases": cases, "bert": bert}


def check_param_groups(param_groups, *, thorough: bool = False) -> None:
    """Per-parameter lr and weight decay equal the reference; each trainable parameter in one group."""
    observed = observe(probe_param_groups, param_groups, thorough=thorough)
    with quiet():
        for (label, stem_frozen, kw), got in zip(_groups_cases(), observed["cases"], strict=True):
            expect(not got["flags_changed"], "param_groups changed requires_grad.")
            _compare(got["groups"], _groups_model(stem_frozen), kw, label)
            if got["adamw_refused"] is not None:
                raise CheckFailure(f"torch.optim.AdamW refused the groups ({label}).", "a valid param-group list",
                                   got["adamw_refused"])
        if thorough:
            _compare(observed["bert"], _tiny_bert(), _BERT_KWARGS, _BERT_LABEL)


def check_warmup_cosine(warmup_cosine, *, thorough: bool = False) -> None:
    """The schedule's value at every step equals the reference."""
    configs = [(20, 5, 0.1), (10, 0, 1.0), (100, 10, 3e-4)]
    if thorough:
        configs += [(7, 1, 2.0), (50, 49, 1e-3)]
    with quiet():
        for total, warmup, base in configs:
            for step in range(total + 3):
                got = as_float(call(warmup_cosine, step, total, warmup, base, name="warmup_cosine"),
                               f"warmup_cosine({step}, {total}, {warmup}, {base})")
                want = reference_warmup_cosine(step, total, warmup, base)
                if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12 * base):
                    phase = "warmup" if step < warmup else ("after the end" if step > total else "cosine decay")
                    hint = {"warmup": "During warmup lr = base_lr * step / warmup_steps: 0 at step 0, "
                                      "reaching base_lr exactly at step == warmup_steps.",
                            "cosine decay": "progress = (step - warmup_steps) / (total_steps - warmup_steps); "
                                            "lr = base_lr * 0.5 * (1 + cos(pi * progress)).",
                            "after the end": "Past total_steps the rate stays at 0 (clip progress at 1)."}[phase]
                    raise CheckFailure(
                        f"warmup_cosine(step={step}, total_steps={total}, warmup_steps={warmup}, base_lr={base}) "
                        f"is wrong ({phase}).", want, got, hint)


# The LR range test of 05_hyperparameters (EfficientNet-Lite0 with a new 10-class head, 640
# Fashion-MNIST images at 32 px, batch 16, AdamW, 50 steps from 1e-5 to 1, seed 0): the smoothed
# loss falls slowly up to 3e-4, steepest around 4e-3, bottoms out near 2e-2 and explodes past
# 5e-2. Good choices lie between the start of the steep descent and a few times below the minimum.
LR_RANGE = (3e-4, 1e-2)


def check_lr_choice(chosen_lr, *, lr_range: tuple[float, float] = LR_RANGE) -> None:
    """The rate read off the LR range test lies in the good region of the curve."""
    lr = as_float(chosen_lr, "chosen_lr")
    low, high = lr_range
    expect(lr > 0 and math.isfinite(lr), "chosen_lr should be a positive number.", "e.g. 1e-3", chosen_lr)
    expect(lr <= high, f"{lr:.1e} is too high: the loss is near its minimum or already rising there.",
           f"between {low:.0e} and {high:.0e}", f"{lr:.1e}",
           "Pick a rate where the loss still falls steeply, several times below the minimum of the curve.")
    expect(lr >= low, f"{lr:.1e} is too low: the loss has barely started to fall there, so training would crawl.",
           f"between {low:.0e} and {high:.0e}", f"{lr:.1e}",
           "Look for the steepest descent of the curve, not its flat start.")
