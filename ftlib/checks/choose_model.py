"""Checks of 01_choose_model: counting parameters."""
from __future__ import annotations

import torch
from torch import nn

from ftlib.checks._common import BNNet, as_int, as_tuple, call, expect, quiet
from ftlib.checks.remote import observe
from ftlib.models import count_parameters as reference

__all__ = ["check_count_parameters", "probe_count_parameters", "reference"]


class _Tied(nn.Module):
    """An embedding and an output layer sharing one weight (as language models do)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.out = nn.Linear(4, 11, bias=False)
        self.out.weight = self.embed.weight


def _cases(thorough: bool):
    torch.manual_seed(0)
    yield "nn.Linear(3, 2)", nn.Linear(3, 2)
    partly = BNNet()
    for p in partly.stem.parameters():
        p.requires_grad_(False)
    yield "a convnet with BatchNorm and a frozen stem", partly
    yield "a model whose embedding and output layer share one weight", _Tied()
    if thorough:
        frozen = BNNet(width=5)
        frozen.requires_grad_(False)
        yield "a fully frozen model", frozen


def probe_count_parameters(count_parameters, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their counts on each model, and whether it kept requires_grad."""
    with quiet():
        observed = []
        for _label, model in _cases(thorough):
            flags = [p.requires_grad for p in model.parameters()]
            found = as_tuple(call(count_parameters, model, name="count_parameters"), 2, "count_parameters")
            observed.append({"trainable": as_int(found[0], "trainable"), "total": as_int(found[1], "total"),
                             "flags_kept": [p.requires_grad for p in model.parameters()] == flags})
        return observed


def check_count_parameters(count_parameters, *, thorough: bool = False) -> None:
    """``count_parameters(model) -> (trainable, total)``: shared tensors once, buffers never."""
    observed = observe(probe_count_parameters, count_parameters, thorough=thorough)
    with quiet():
        for (label, model), got in zip(_cases(thorough), observed, strict=True):
            trainable, total = as_int(got["trainable"], "trainable"), as_int(got["total"], "total")
            want = reference(model)
            expect(got["flags_kept"], f"count_parameters changed requires_grad on {label}.",
                   hint="Only read the parameters; do not freeze or unfreeze them.")
            expect(total == want[1], f"Wrong total for {label}.", want[1], total,
                   "Sum p.numel() over model.parameters() (it yields a shared tensor once); "
                   "buffers such as BatchNorm running statistics are not parameters.")
            expect(trainable == want[0], f"Wrong trainable count for {label}.", want[0], trainable,
                   "Count only parameters with p.requires_grad.")
