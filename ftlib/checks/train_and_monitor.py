"""Checks of 06_train_and_monitor: one training epoch, evaluation, early stopping."""
from __future__ import annotations

import math

import torch
from torch import nn

from ftlib.checks._common import (BNNet, ModeSpy, CheckFailure, as_float, call, expect, quiet, same_state, state_snapshot,
                                  tiny_image_loader)
from ftlib.checks.remote import observe
from ftlib.freezing import freeze_up_to
from ftlib.train import EarlyStopping as ReferenceEarlyStopping
from ftlib.train import evaluate as reference_evaluate
from ftlib.train import train_one_epoch as reference_train_one_epoch

__all__ = ["check_train_one_epoch", "check_evaluate", "check_EarlyStopping", "probe_train_one_epoch", "probe_evaluate",
           "probe_EarlyStopping"]


def _metric(result, key: str, fn_name: str) -> float:
    expect(isinstance(result, dict), f"{fn_name} should return a dict.", "dict", type(result).__name__,
           'Return {"loss": ..., "accuracy": ...}.')
    expect(key in result, f"{fn_name}'s dict has no {key!r} entry.", '"loss" and "accuracy"', sorted(map(str, result)))
    return as_float(result[key], f"{fn_name}'s {key!r}")


def _setup(seed: int, frozen: bool, p: float = 0.0):
    torch.manual_seed(seed)
    model = BNNet(p=p)
    if frozen:
        freeze_up_to(model, "stem")
    return model


class _CountingScheduler:
    """Wraps a LambdaLR and counts step() calls."""

    def __init__(self, optimizer) -> None:
        self.inner = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        self.steps = 0

    def step(self):
        self.steps += 1
        self.inner.step()

    def get_last_lr(self):
        return self.inner.get_last_lr()


def _setups(thorough: bool) -> list[tuple[int, bool, bool]]:
    # (seed, stem frozen, with a scheduler)
    return [(0, True, True), (1, False, False)] + ([(2, True, False)] if thorough else [])


def _one_epoch(fn, seed: int, frozen: bool, with_scheduler: bool, *, learner: bool):
    loader = tiny_image_loader(n=30, batch_size=8, seed=seed)  # batches of 8, 8, 8 and 6
    model = _setup(seed, frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    scheduler = _CountingScheduler(optimizer) if with_scheduler else None
    model.eval()  # the function must switch to train mode itself
    if learner:
        args = (model, loader, optimizer, nn.CrossEntropyLoss()) + ((scheduler,) if scheduler else ())
        result = call(fn, *args, name="train_one_epoch")
    else:
        result = fn(model, loader, optimizer, nn.CrossEntropyLoss(), scheduler)
    return model, result, scheduler


def probe_train_one_epoch(train_one_epoch, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: one epoch of their function per setup, observed as data."""
    with quiet():
        observed = []
        for seed, frozen, with_scheduler in _setups(thorough):
            model, result, scheduler = _one_epoch(train_one_epoch, seed, frozen, with_scheduler, learner=True)
            observed.append({"loss": _metric(result, "loss", "train_one_epoch"),
                             "accuracy": _metric(result, "accuracy", "train_one_epoch"),
                             "steps": scheduler.steps if scheduler else None, "training": model.training,
                             "state": state_snapshot(model)})
        return observed


def check_train_one_epoch(train_one_epoch, *, thorough: bool = False) -> None:
    """Same weights, loss and accuracy as the reference after one epoch; frozen BatchNorm untouched."""
    observed = observe(probe_train_one_epoch, train_one_epoch, thorough=thorough)
    with quiet():
        for (seed, frozen, with_scheduler), got in zip(_setups(thorough), observed, strict=True):
            label = f"seed {seed}, {'stem frozen' if frozen else 'all trainable'}, " \
                    f"{'with' if with_scheduler else 'without'} scheduler"
            ref_model, ref_result, ref_scheduler = _one_epoch(reference_train_one_epoch, seed, frozen,
                                                              with_scheduler, learner=False)
            if with_scheduler:
                expect(got["steps"] == ref_scheduler.steps,
                       f"The scheduler should step once per batch ({label}).", ref_scheduler.steps, got["steps"],
                       "Call scheduler.step() right after optimizer.step(), inside the loop over batches.")
            expect(got["training"], "After train_one_epoch the model should be in train mode.", "train", "eval")
            got_state, want_state = got["state"], state_snapshot(ref_model)
            bn_stats = [n for n in same_state(got_state, want_state, atol=1e-5) if "running" in n or "num_batches" in n]
            if frozen and any(n.startswith("stem.") for n in bn_stats):
                raise CheckFailure(f"The running statistics of the frozen stem's BatchNorm moved ({label}).",
                                   "unchanged (pretrained statistics)", f"changed: {bn_stats[:3]}",
                                   "After model.train(), call ftlib.freezing.set_frozen_batchnorm_eval(model).")
            diff = same_state(got_state, want_state, atol=1e-5)
            expect(not diff, f"After one epoch the weights differ from the reference ({label}).", "equal weights",
                   f"differ: {diff[:4]}",
                   "For every batch: optimizer.zero_grad(), forward, loss, backward, optimizer.step(), then "
                   "scheduler.step() if given. Forgetting zero_grad() accumulates gradients across batches.")
            want_loss = ref_result["loss"]
            expect(math.isclose(got["loss"], want_loss, rel_tol=1e-5),
                   f"The returned loss is wrong ({label}).", f"{want_loss:.6f}", f"{got['loss']:.6f}",
                   "Average over examples, not batches: sum loss.item() * batch_size, divide by the number of "
                   "examples (the last batch is smaller).")
            expect(math.isclose(got["accuracy"], ref_result["accuracy"], abs_tol=1e-9),
                   f"The returned accuracy is wrong ({label}).", ref_result["accuracy"], got["accuracy"],
                   "Fraction of examples whose argmax logit equals the label.")


def _evaluate_modes(thorough: bool) -> tuple[bool, ...]:
    # the mode the model is in when evaluate is called: it must be restored
    return (True, False) if thorough else (True,)


def _evaluate_inputs():
    model = _setup(3, frozen=False, p=0.5)
    return model, tiny_image_loader(n=30, batch_size=8, seed=4)


def probe_evaluate(evaluate, *, thorough: bool = False) -> list[dict]:
    """Where the learner's code runs: their evaluate on a model that records each forward call."""
    with quiet():
        observed = []
        for start_training in _evaluate_modes(thorough):
            model, loader = _evaluate_inputs()
            spy = ModeSpy(model).train(start_training)
            before = state_snapshot(model)
            result = call(evaluate, spy, loader, nn.CrossEntropyLoss(), name="evaluate")
            observed.append({"loss": _metric(result, "loss", "evaluate"),
                             "accuracy": _metric(result, "accuracy", "evaluate"),
                             "calls": [list(c) for c in spy.calls], "training": spy.training,
                             "changed": same_state(before, state_snapshot(model)),
                             "grads": any(p.grad is not None for p in model.parameters())})
        return observed


def check_evaluate(evaluate, *, thorough: bool = False) -> None:
    """Eval mode, no gradients, mode restored, model untouched, example-averaged loss."""
    observed = observe(probe_evaluate, evaluate, thorough=thorough)
    with quiet():
        for start_training, got in zip(_evaluate_modes(thorough), observed, strict=True):
            calls = got["calls"]
            expect(bool(calls), "evaluate never called the model.")
            expect(not any(t for t, _ in calls), "The model was evaluated in train mode.", "eval mode",
                   "train mode (dropout active, BatchNorm on batch statistics)",
                   "Call model.eval() before the loop, and restore the previous mode afterwards.")
            expect(not any(g for _, g in calls), "Gradients were recorded during evaluation.", "torch.no_grad()",
                   "grad enabled", "Wrap the loop in `with torch.no_grad():` (or decorate with @torch.no_grad()).")
            expect(got["training"] == start_training, "evaluate did not restore the model's previous mode.",
                   "train" if start_training else "eval", "train" if got["training"] else "eval",
                   "was_training = model.training ... model.train(was_training).")
            expect(not got["changed"], "Evaluating changed the model.", "no change", got["changed"][:4])
            expect(not got["grads"], "evaluate computed gradients.")
            reference_model, loader = _evaluate_inputs()
            want = reference_evaluate(reference_model, loader, nn.CrossEntropyLoss())
            expect(math.isclose(got["loss"], want["loss"], rel_tol=1e-5), "The returned loss is wrong.",
                   f"{want['loss']:.6f}", f"{got['loss']:.6f}",
                   "Average over examples: the last batch holds 6 examples, the others 8.")
            expect(math.isclose(got["accuracy"], want["accuracy"], abs_tol=1e-9), "The returned accuracy is wrong.",
                   want["accuracy"], got["accuracy"])


_SEQUENCES = [
    (2, 0.1, [1.0, 0.95, 0.8, 0.85, 0.79, 0.5, 0.6, 0.7]),
    (1, 0.0, [1.0, 0.9, 0.9, 0.8]),
    (3, 0.0, [0.5, 0.6, 0.5, 0.4, 0.45, 0.45, 0.45, 0.1]),
    (2, 0.05, [1.0, 0.96, 0.97, 0.90, 0.88, 0.86, 0.85]),
]


def _sequences(thorough: bool) -> list[tuple[int, float, list[float]]]:
    return _SEQUENCES[: None if thorough else 3]


def probe_EarlyStopping(EarlyStopping, *, thorough: bool = False) -> list[dict]:  # noqa: N802 - the class's name
    """Where the learner's code runs: their class stepped through each sequence of losses."""
    with quiet():
        observed = []
        for patience, min_delta, values in _sequences(thorough):
            stopper = call(EarlyStopping, patience=patience, min_delta=min_delta, name="EarlyStopping")
            answers = []
            for v in values:
                answer = call(stopper.step, v, name="EarlyStopping.step")
                expect(type(answer) is bool, "step() should return True or False.", "bool", type(answer).__name__)
                answers.append(answer)
            observed.append({"answers": answers, "best": as_float(getattr(stopper, "best_", None), "best_")})
        return observed


def check_EarlyStopping(EarlyStopping, *, thorough: bool = False) -> None:  # noqa: N802 - the class's name
    """``step(value)`` says stop exactly when the reference does; ``best_`` tracks the best value."""
    observed = observe(probe_EarlyStopping, EarlyStopping, thorough=thorough)
    with quiet():
        for (patience, min_delta, values), got in zip(_sequences(thorough), observed, strict=True):
            reference = ReferenceEarlyStopping(patience=patience, min_delta=min_delta)
            want = [reference.step(v) for v in values]
            label = f"patience={patience}, min_delta={min_delta}, losses {values}"
            expect(got["answers"] == want, f"step() answers differ from the reference ({label}).", want,
                   got["answers"], "An improvement must beat the best so far by MORE than min_delta; stop once "
                   "`patience` epochs in a row brought none.")
            best = got["best"]
            expect(type(best) is float and math.isclose(best, reference.best_), f"best_ is wrong ({label}).",
                   reference.best_, best, "best_ is the best value that counted as an improvement.")
