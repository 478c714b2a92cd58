"""Checks of 04_modify_model: a new head, freezing, and BatchNorm in frozen blocks."""
from __future__ import annotations

import torch
from torch import nn

from ftlib.checks._common import BNNet, CheckFailure, as_int, call, expect, quiet, same_state, state_snapshot
from ftlib.freezing import block_names
from ftlib.freezing import freeze_backbone as reference_freeze_backbone
from ftlib.freezing import freeze_up_to as reference_freeze_up_to
from ftlib.freezing import set_frozen_batchnorm_eval as reference_set_frozen_batchnorm_eval

__all__ = ["check_replace_head", "check_freeze_backbone", "check_freeze_up_to", "check_set_frozen_batchnorm_eval"]

# Imported once by `ftlib check` before its grade cells fork (see grading._runner).
PRELOAD = ("transformers.models.bert.modeling_bert",)


class _LiteLike(nn.Module):
    """EfficientNet-Lite names its head ``_fc``; 1280 features in the real one, 20 here."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 20, 3, padding=1)
        self._bn0 = nn.BatchNorm2d(20)
        self._fc = nn.Linear(20, 1000)

    def forward(self, x):
        return self._fc(self._bn0(self._conv_stem(x)).mean(dim=(2, 3)))


def _tiny_bert(num_classes: int = 2):
    from ftlib.models import load_model

    torch.manual_seed(0)
    return load_model("tiny-bert", num_classes=num_classes)


def _linears(head: nn.Module) -> list[nn.Linear]:
    return [m for m in head.modules() if isinstance(m, nn.Linear)]


def _check_head(model, attr, old_head, in_features, num_classes, dropout, label):
    head = getattr(model, attr, None)
    expect(isinstance(head, nn.Module), f"The model has no head `{attr}` any more ({label}).")
    expect(head is not old_head, f"The head was not replaced ({label}).", "a new module", "the old head object",
           f"Assign a new layer: setattr(model, '{attr}', new_head).")
    linears = _linears(head)
    expect(len(linears) == 1, f"The new head should contain exactly one nn.Linear ({label}).", 1, len(linears))
    linear = linears[0]
    expect(linear.in_features == in_features, f"The new head has the wrong input width ({label}).", in_features,
           linear.in_features, "Read in_features from the old head's nn.Linear; never hard-code it.")
    expect(linear.out_features == num_classes, f"The new head has the wrong number of outputs ({label}).",
           num_classes, linear.out_features)
    drops = [m for m in head.modules() if isinstance(m, nn.Dropout)]
    if dropout > 0:
        expect(len(drops) == 1 and abs(drops[0].p - dropout) < 1e-12,
               f"With dropout={dropout} the head should be nn.Sequential(nn.Dropout({dropout}), nn.Linear(...)) ({label}).",
               f"one Dropout(p={dropout})", [d.p for d in drops])
        order = [m for m in head.modules() if isinstance(m, (nn.Dropout, nn.Linear))]
        expect(order[0] is drops[0], f"Dropout should come before the Linear layer ({label}).",
               "Dropout, then Linear", [type(m).__name__ for m in order])
    else:
        expect(not [d for d in drops if d.p > 0], f"With dropout=0 the head should have no dropout ({label}).")
    return head


def check_replace_head(replace_head, *, thorough: bool = False) -> None:
    """A fresh Linear of the right width, optional dropout in front, backbone untouched."""
    with quiet():
        cases = [("BNNet (head `fc`, 6 features)", lambda: BNNet(num_classes=3), "fc", 6, 7, 0.0),
                 ("EfficientNet-like (head `_fc`, 20 features)", _LiteLike, "_fc", 20, 10, 0.3)]
        if thorough:
            def seq_head():
                m = BNNet(width=5)
                m.fc = nn.Sequential(nn.Dropout(0.1), nn.Linear(5, 4))
                return m
            cases.append(("a model whose head is already Sequential(Dropout, Linear)", seq_head, "fc", 5, 3, 0.2))
        for label, build, attr, in_features, num_classes, dropout in cases:
            torch.manual_seed(0)
            model = build()
            old = getattr(model, attr)
            before = {k: v for k, v in state_snapshot(model).items() if not k.startswith(attr + ".")}
            returned = call(replace_head, model, num_classes, dropout=dropout, name="replace_head")
            expect(returned is model, f"replace_head should return the model it changed in place ({label}).",
                   "the same model object", type(returned).__name__)
            _check_head(model, attr, old, in_features, num_classes, dropout, label)
            after = {k: v for k, v in state_snapshot(model).items() if not k.startswith(attr + ".")}
            changed = same_state(before, after)
            expect(not changed, f"replace_head changed the backbone ({label}).", "only the head changes", changed[:4])
            model.eval()
            out = model(torch.randn(2, 3, 8, 8))
            expect(tuple(out.shape) == (2, num_classes), f"The model's output has the wrong shape ({label}).",
                   (2, num_classes), tuple(out.shape))
        model = _tiny_bert(2)
        old = model.classifier
        call(replace_head, model, 5, name="replace_head")
        _check_head(model, "classifier", old, 32, 5, 0.0, "tiny BERT (head `classifier`)")
        expect(model.config.num_labels == 5, "For a Hugging Face model, also set model.config.num_labels.",
               5, model.config.num_labels, "Its loss function reads config.num_labels.")
        out = model(input_ids=torch.tensor([[101, 2000, 102]]), labels=torch.tensor([4])).logits
        expect(tuple(out.shape) == (1, 5), "tiny BERT's logits have the wrong shape after replace_head.", (1, 5),
               tuple(out.shape))


def _mask(model: nn.Module) -> dict[str, bool]:
    return {n: bool(p.requires_grad) for n, p in model.named_parameters()}


def _compare_masks(got: dict, want: dict, what: str, hint: str) -> None:
    wrong_frozen = [n for n in want if want[n] and not got[n]]
    wrong_trainable = [n for n in want if not want[n] and got[n]]
    expect(not wrong_frozen and not wrong_trainable, what,
           f"{sum(want.values())} trainable tensors",
           f"should train but frozen: {wrong_frozen[:4]}; should be frozen but train: {wrong_trainable[:4]}", hint)


def check_freeze_backbone(freeze_backbone, *, thorough: bool = False) -> None:
    """Only the head trains afterwards, whatever was frozen before; values untouched."""
    with quiet():
        builds = [("BNNet", lambda: BNNet()), ("EfficientNet-like", _LiteLike), ("tiny BERT", _tiny_bert)]
        for label, build in builds:
            torch.manual_seed(0)
            model, reference = build(), build()
            for m in (model, reference):  # start from an odd state: head frozen, backbone trainable
                m.requires_grad_(True)
                for n, p in m.named_parameters():
                    if n.split(".")[0] in ("fc", "_fc", "classifier"):
                        p.requires_grad_(False)
            before = state_snapshot(model)
            returned = call(freeze_backbone, model, name="freeze_backbone")
            expect(returned is model, "freeze_backbone should return the model.", "the same model", type(returned).__name__)
            reference_freeze_backbone(reference)
            _compare_masks(_mask(model), _mask(reference), f"Wrong requires_grad after freeze_backbone ({label}).",
                           "Set requires_grad=False on every parameter, then True on the head's (it may have been frozen).")
            expect(not same_state(before, state_snapshot(model)), "freeze_backbone must not change any values.")


def check_freeze_up_to(freeze_up_to, *, thorough: bool = False) -> None:
    """Blocks up to and including ``block_name`` frozen; everything above trainable; bad names refused."""
    with quiet():
        cases = [("BNNet", lambda: BNNet(), ["stem", "blocks.0", "blocks.1"]),
                 ("tiny BERT", _tiny_bert, ["bert.embeddings", "bert.encoder.layer.0"])]
        if thorough:
            cases.append(("tiny BERT", _tiny_bert, ["bert.encoder.layer.1", "bert.pooler"]))
        for label, build, names in cases:
            for name in names:
                torch.manual_seed(0)
                model, reference = build(), build()
                model.requires_grad_(False)  # start fully frozen: the top must be unfrozen
                reference.requires_grad_(False)
                returned = call(freeze_up_to, model, name, name="freeze_up_to")
                expect(returned is model, "freeze_up_to should return the model.", "the same model", type(returned).__name__)
                reference_freeze_up_to(reference, name)
                _compare_masks(_mask(model), _mask(reference),
                               f"Wrong requires_grad after freeze_up_to(model, {name!r}) on {label} "
                               f"(blocks: {block_names(reference)}).",
                               "Freeze the blocks from the bottom up to AND including block_name; make every "
                               "block above it and the head trainable.")
        model = BNNet()
        try:
            freeze_up_to(model, "layer9")
        except NotImplementedError:
            raise CheckFailure("freeze_up_to is not implemented yet.") from None
        except ValueError as err:
            expect("stem" in str(err), "The ValueError for an unknown block should list the valid names.",
                   f"a message listing {block_names(model)}", str(err))
        except Exception as err:
            raise CheckFailure("An unknown block name should raise ValueError.", "ValueError",
                               f"{type(err).__name__}: {err}") from None
        else:
            raise CheckFailure("freeze_up_to(model, 'layer9') should raise ValueError: there is no such block.",
                               "ValueError listing the valid block names", "no error",
                               "A typo would otherwise freeze nothing, silently.")


def _bn_training(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def check_set_frozen_batchnorm_eval(set_frozen_batchnorm_eval, *, thorough: bool = False) -> None:
    """Frozen BatchNorm layers in eval mode (running statistics stay), the rest untouched."""
    with quiet():
        setups = ["stem+blocks.0", "partial"]
        for setup in setups:
            torch.manual_seed(0)
            model, reference = BNNet(), BNNet()
            for m in (model, reference):
                reference_freeze_up_to(m, "blocks.0")
                if setup == "partial":  # a BatchNorm with a frozen weight but a trainable bias still learns
                    m.blocks[0][1].bias.requires_grad_(True)
                m.train()
            count = as_int(call(set_frozen_batchnorm_eval, model, name="set_frozen_batchnorm_eval"),
                           "set_frozen_batchnorm_eval's return value")
            want_count = reference_set_frozen_batchnorm_eval(reference)
            got_modes, want_modes = _bn_training(model), _bn_training(reference)
            wrong = [n for n in want_modes if got_modes[n] != want_modes[n]]
            expect(not wrong, f"Wrong BatchNorm modes ({setup}).",
                   {n: "train" if t else "eval" for n, t in want_modes.items()},
                   {n: "train" if t else "eval" for n, t in got_modes.items()},
                   "Only BatchNorm layers whose parameters ALL have requires_grad=False go to eval mode.")
            others = [n for n, m in model.named_modules()
                      if not isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training]
            expect(not others, "Only BatchNorm layers should change mode; the rest of the model stays in train mode.",
                   "train mode", f"eval mode: {others[:4]}", "Do not call model.eval().")
            expect(count == want_count, f"Wrong number of switched layers returned ({setup}).", want_count, count)
            frozen_bn = [n for n, t in want_modes.items() if not t]
            before = state_snapshot(model)
            model(torch.randn(4, 3, 8, 8))
            after = state_snapshot(model)
            moved = [n for n in same_state(before, after) if any(n.startswith(b + ".") for b in frozen_bn)]
            expect(not moved, "A training step moved the running statistics of a frozen BatchNorm.", "unchanged", moved[:4])
