"""Checks of 04_modify_model: a new head, freezing, and BatchNorm in frozen blocks."""
from __future__ import annotations

import torch
from torch import nn

from ftlib.checks._common import (error_text, BNNet, CheckFailure, as_float, as_int, call, expect, quiet, same_state,
                                  state_snapshot)
from ftlib.checks.remote import observe
from ftlib.freezing import block_names
from ftlib.freezing import freeze_backbone as reference_freeze_backbone
from ftlib.freezing import freeze_up_to as reference_freeze_up_to
from ftlib.freezing import set_frozen_batchnorm_eval as reference_set_frozen_batchnorm_eval

__all__ = ["check_replace_head", "check_freeze_backbone", "check_freeze_up_to", "check_set_frozen_batchnorm_eval",
           "probe_replace_head", "probe_freeze_backbone", "probe_freeze_up_to", "probe_set_frozen_batchnorm_eval"]

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


def _describe_head(model, attr: str, old_head) -> dict:
    """The head ``model.<attr>`` as data: the layers `_check_head` judges."""
    head = getattr(model, attr, None)
    if not isinstance(head, nn.Module):
        return {"module": False}
    linears = _linears(head)
    drops = [m for m in head.modules() if isinstance(m, nn.Dropout)]
    order = [m for m in head.modules() if isinstance(m, (nn.Dropout, nn.Linear))]
    return {"module": True, "same_object": head is old_head,
            "linears": [(as_int(m.in_features, "the new head's in_features"),
                         as_int(m.out_features, "the new head's out_features")) for m in linears],
            "dropouts": [as_float(d.p, "the head's dropout probability") for d in drops],
            "order": [type(m).__name__ for m in order],
            "dropout_first": bool(drops) and order[0] is drops[0]}


def _check_head(head: dict, attr, in_features, num_classes, dropout, label) -> None:
    expect(head["module"], f"The model has no head `{attr}` any more ({label}).")
    expect(not head["same_object"], f"The head was not replaced ({label}).", "a new module", "the old head object",
           f"Assign a new layer: setattr(model, '{attr}', new_head).")
    linears = head["linears"]
    expect(len(linears) == 1, f"The new head should contain exactly one nn.Linear ({label}).", 1, len(linears))
    linear_in, linear_out = linears[0]
    expect(linear_in == in_features, f"The new head has the wrong input width ({label}).", in_features,
           linear_in, "Read in_features from the old head's nn.Linear; never hard-code it.")
    expect(linear_out == num_classes, f"The new head has the wrong number of outputs ({label}).",
           num_classes, linear_out)
    drops = head["dropouts"]
    if dropout > 0:
        expect(len(drops) == 1 and abs(drops[0] - dropout) < 1e-12,
               f"With dropout={dropout} the head should be nn.Sequential(nn.Dropout({dropout}), nn.Linear(...)) ({label}).",
               f"one Dropout(p={dropout})", drops)
        expect(head["dropout_first"], f"Dropout should come before the Linear layer ({label}).",
               "Dropout, then Linear", head["order"])
    else:
        expect(not [p for p in drops if p > 0], f"With dropout=0 the head should have no dropout ({label}).")


def _output_shape(run) -> dict:
    """The shape of ``run()``'s output, or what it raised, as data."""
    try:
        out = run()
        return {"shape": tuple(as_int(n, "a dimension of the output") for n in out.shape)}
    except CheckFailure:
        raise
    except Exception as err:
        return {"error": f"{type(err).__name__}: {error_text(err)}"}


def _expect_shape(output: dict, want: tuple, what: str, label: str) -> None:
    if "error" in output:
        raise CheckFailure(f"Running the model after replace_head raised {output['error']} ({label}).", want,
                           output["error"], "The new head must take the backbone's features and give one logit "
                                            "per class.")
    expect(output["shape"] == want, what, want, output["shape"])


def _head_cases(thorough: bool) -> list[tuple]:
    # (label, builder, head attribute, its in_features, num_classes, dropout)
    cases = [("BNNet (head `fc`, 6 features)", lambda: BNNet(num_classes=3), "fc", 6, 7, 0.0),
             ("EfficientNet-like (head `_fc`, 20 features)", _LiteLike, "_fc", 20, 10, 0.3)]
    if thorough:
        def seq_head():
            m = BNNet(width=5)
            m.fc = nn.Sequential(nn.Dropout(0.1), nn.Linear(5, 4))
            return m
        cases.append(("a model whose head is already Sequential(Dropout, Linear)", seq_head, "fc", 5, 3, 0.2))
    return cases


_BERT_LABEL = "tiny BERT (head `classifier`)"


def probe_replace_head(replace_head, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: each model after their replace_head, described as data."""
    with quiet():
        cases = []
        for _label, build, attr, _in_features, num_classes, dropout in _head_cases(thorough):
            torch.manual_seed(0)
            model = build()
            old = getattr(model, attr)
            before = {k: v for k, v in state_snapshot(model).items() if not k.startswith(attr + ".")}
            returned = call(replace_head, model, num_classes, dropout=dropout, name="replace_head")
            after = {k: v for k, v in state_snapshot(model).items() if not k.startswith(attr + ".")}
            model.eval()
            cases.append({"returned_model": returned is model, "returned": type(returned).__name__,
                          "head": _describe_head(model, attr, old), "backbone_changed": same_state(before, after),
                          "output": _output_shape(lambda: model(torch.randn(2, 3, 8, 8)))})
        model = _tiny_bert(2)
        old = model.classifier
        call(replace_head, model, 5, name="replace_head")
        bert = {"head": _describe_head(model, "classifier", old),
                "num_labels": as_int(model.config.num_labels, "model.config.num_labels"),
                "output": _output_shape(lambda: model(input_ids=torch.tensor([[101, 2000, 102]]),
                                                      labels=torch.tensor([4])).logits)}
        return {"cases": cases, "bert": bert}


def check_replace_head(replace_head, *, thorough: bool = False) -> None:
    """A fresh Linear of the right width, optional dropout in front, backbone untouched."""
    observed = observe(probe_replace_head, replace_head, thorough=thorough)
    with quiet():
        for (label, _build, attr, in_features, num_classes, dropout), got in zip(_head_cases(thorough),
                                                                                 observed["cases"], strict=True):
            expect(got["returned_model"], f"replace_head should return the model it changed in place ({label}).",
                   "the same model object", got["returned"])
            _check_head(got["head"], attr, in_features, num_classes, dropout, label)
            changed = got["backbone_changed"]
            expect(not changed, f"replace_head changed the backbone ({label}).", "only the head changes", changed[:4])
            _expect_shape(got["output"], (2, num_classes), f"The model's output has the wrong shape ({label}).", label)
        bert = observed["bert"]
        _check_head(bert["head"], "classifier", 32, 5, 0.0, _BERT_LABEL)
        expect(bert["num_labels"] == 5, "For a Hugging Face model, also set model.config.num_labels.",
               5, bert["num_labels"], "Its loss function reads config.num_labels.")
        _expect_shape(bert["output"], (1, 5), "tiny BERT's logits have the wrong shape after replace_head.",
                      _BERT_LABEL)


def _mask(model: nn.Module) -> dict[str, bool]:
    return {n: bool(p.requires_grad) for n, p in model.named_parameters()}


def _compare_masks(got: dict, want: dict, what: str, hint: str) -> None:
    wrong_frozen = [n for n in want if want[n] and not got.get(n)]
    wrong_trainable = [n for n in want if not want[n] and got.get(n)]
    expect(not wrong_frozen and not wrong_trainable, what,
           f"{sum(want.values())} trainable tensors",
           f"should train but frozen: {wrong_frozen[:4]}; should be frozen but train: {wrong_trainable[:4]}", hint)


def _returned(returned, model) -> dict:
    return {"same": returned is model, "type": type(returned).__name__}


_BACKBONE_BUILDS = [("BNNet", lambda: BNNet()), ("EfficientNet-like", _LiteLike), ("tiny BERT", _tiny_bert)]


def _odd_start(build) -> nn.Module:
    """A fresh model in an odd state: head frozen, backbone trainable."""
    torch.manual_seed(0)
    model = build()
    model.requires_grad_(True)
    for n, p in model.named_parameters():
        if n.split(".")[0] in ("fc", "_fc", "classifier"):
            p.requires_grad_(False)
    return model


def probe_freeze_backbone(freeze_backbone, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: which parameters train after their freeze_backbone, as data."""
    with quiet():
        observed = []
        for _label, build in _BACKBONE_BUILDS:
            model = _odd_start(build)
            before = state_snapshot(model)
            returned = call(freeze_backbone, model, name="freeze_backbone")
            observed.append({"returned": _returned(returned, model), "mask": _mask(model),
                             "changed": same_state(before, state_snapshot(model))})
        return observed


def check_freeze_backbone(freeze_backbone, *, thorough: bool = False) -> None:
    """Only the head trains afterwards, whatever was frozen before; values untouched."""
    observed = observe(probe_freeze_backbone, freeze_backbone, thorough=thorough)
    with quiet():
        for (label, build), got in zip(_BACKBONE_BUILDS, observed, strict=True):
            expect(got["returned"]["same"], "freeze_backbone should return the model.", "the same model",
                   got["returned"]["type"])
            reference = _odd_start(build)
            reference_freeze_backbone(reference)
            _compare_masks(got["mask"], _mask(reference), f"Wrong requires_grad after freeze_backbone ({label}).",
                           "Set requires_grad=False on every parameter, then True on the head's (it may have been frozen).")
            expect(not got["changed"], "freeze_backbone must not change any values.")


def _freeze_up_to_cases(thorough: bool) -> list[tuple]:
    cases = [("BNNet", lambda: BNNet(), ["stem", "blocks.0", "blocks.1"]),
             ("tiny BERT", _tiny_bert, ["bert.embeddings", "bert.encoder.layer.0"])]
    if thorough:
        cases.append(("tiny BERT", _tiny_bert, ["bert.encoder.layer.1", "bert.pooler"]))
    return [(label, build, name) for label, build, names in cases for name in names]


def _fully_frozen(build) -> nn.Module:
    torch.manual_seed(0)
    model = build()
    model.requires_grad_(False)  # start fully frozen: the top must be unfrozen
    return model


def probe_freeze_up_to(freeze_up_to, *, thorough: bool = False) -> dict:
    """Where the learner's code runs: the masks after their freeze_up_to, and what a bad name raises."""
    with quiet():
        cases = []
        for _label, build, name in _freeze_up_to_cases(thorough):
            model = _fully_frozen(build)
            returned = call(freeze_up_to, model, name, name="freeze_up_to")
            cases.append({"returned": _returned(returned, model), "mask": _mask(model)})
        try:
            freeze_up_to(BNNet(), "layer9")
        except NotImplementedError:
            raise CheckFailure("freeze_up_to is not implemented yet.") from None
        except Exception as err:
            raised = {"type": type(err).__name__, "value_error": isinstance(err, ValueError), "message": error_text(err)}
        else:
            raised = None
        return {"cases": cases, "bad_name": raised}


def check_freeze_up_to(freeze_up_to, *, thorough: bool = False) -> None:
    """Blocks up to and including ``block_name`` frozen; everything above trainable; bad names refused."""
    observed = observe(probe_freeze_up_to, freeze_up_to, thorough=thorough)
    with quiet():
        for (label, build, name), got in zip(_freeze_up_to_cases(thorough), observed["cases"], strict=True):
            expect(got["returned"]["same"], "freeze_up_to should return the model.", "the same model",
                   got["returned"]["type"])
            reference = _fully_frozen(build)
            reference_freeze_up_to(reference, name)
            _compare_masks(got["mask"], _mask(reference),
                           f"Wrong requires_grad after freeze_up_to(model, {name!r}) on {label} "
                           f"(blocks: {block_names(reference)}).",
                           "Freeze the blocks from the bottom up to AND including block_name; make every "
                           "block above it and the head trainable.")
        raised = observed["bad_name"]
        if raised is None:
            raise CheckFailure("freeze_up_to(model, 'layer9') should raise ValueError: there is no such block.",
                               "ValueError listing the valid block names", "no error",
                               "A typo would otherwise freeze nothing, silently.")
        if not raised["value_error"]:
            raise CheckFailure("An unknown block name should raise ValueError.", "ValueError",
                               f"{raised['type']}: {raised['message']}")
        expect("stem" in raised["message"], "The ValueError for an unknown block should list the valid names.",
               f"a message listing {block_names(BNNet())}", raised["message"])


def _bn_training(model: nn.Module) -> dict[str, bool]:
    return {n: bool(m.training) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


_BN_SETUPS = ["stem+blocks.0", "partial"]


def _bn_setup(setup: str) -> BNNet:
    torch.manual_seed(0)
    model = BNNet()
    reference_freeze_up_to(model, "blocks.0")
    if setup == "partial":  # a BatchNorm with a frozen weight but a trainable bias still learns
        model.blocks[0][1].bias.requires_grad_(True)
    return model.train()


def probe_set_frozen_batchnorm_eval(set_frozen_batchnorm_eval, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: modes after their function, and what a training forward moved."""
    with quiet():
        observed = []
        for setup in _BN_SETUPS:
            model = _bn_setup(setup)
            count = as_int(call(set_frozen_batchnorm_eval, model, name="set_frozen_batchnorm_eval"),
                           "set_frozen_batchnorm_eval's return value")
            modes = _bn_training(model)
            others = [n for n, m in model.named_modules()
                      if not isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training]
            before = state_snapshot(model)
            model(torch.randn(4, 3, 8, 8))
            observed.append({"count": count, "modes": modes, "others": others,
                             "moved": same_state(before, state_snapshot(model))})
        return observed


def check_set_frozen_batchnorm_eval(set_frozen_batchnorm_eval, *, thorough: bool = False) -> None:
    """Frozen BatchNorm layers in eval mode (running statistics stay), the rest untouched."""
    observed = observe(probe_set_frozen_batchnorm_eval, set_frozen_batchnorm_eval, thorough=thorough)
    with quiet():
        for setup, got in zip(_BN_SETUPS, observed, strict=True):
            reference = _bn_setup(setup)
            want_count = reference_set_frozen_batchnorm_eval(reference)
            got_modes, want_modes = got["modes"], _bn_training(reference)
            wrong = [n for n in want_modes if got_modes.get(n) != want_modes[n]]
            expect(not wrong, f"Wrong BatchNorm modes ({setup}).",
                   {n: "train" if t else "eval" for n, t in want_modes.items()},
                   {n: "train" if t else "eval" for n, t in got_modes.items()},
                   "Only BatchNorm layers whose parameters ALL have requires_grad=False go to eval mode.")
            others = got["others"]
            expect(not others, "Only BatchNorm layers should change mode; the rest of the model stays in train mode.",
                   "train mode", f"eval mode: {others[:4]}", "Do not call model.eval().")
            count = got["count"]
            expect(count == want_count, f"Wrong number of switched layers returned ({setup}).", want_count, count)
            frozen_bn = [n for n, t in want_modes.items() if not t]
            moved = [n for n in got["moved"] if any(n.startswith(b + ".") for b in frozen_bn)]
            expect(not moved, "A training step moved the running statistics of a frozen BatchNorm.", "unchanged", moved[:4])
