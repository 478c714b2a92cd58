"""Where and how training runs: device, precision, seeds, and one process or many.

Shared by step 6 (``ftlib.train``) and everything that trains or evaluates: the device
moves (pinned memory on CUDA, so ``non_blocking`` overlaps the copy), the logits and
labels of a batch for any model, the precision a
machine runs natively (decided from the hardware, never assumed), seeding (GPU runs made
reproducible where the backend allows), :class:`Runtime` (what a run asks for: device,
precision, deterministic kernels) and the two ways ``fit`` runs its steps:

* one process (a laptop, one GPU): plain PyTorch, exactly as a hand-written loop;
* several processes started by ``accelerate launch`` (several GPUs or machines, or CPU
  processes over gloo): Hugging Face ``accelerate`` shards the loaders, averages the
  gradients and gathers the validation metrics over the whole validation set.

This module does not train; it only says how.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ftlib import arguments

__all__ = [
    "PRECISIONS",
    "default_device",
    "to_device",
    "logits_and_labels",
    "set_seed",
    "reproducible",
    "cpu_has_native_bf16",
    "resolve_precision",
    "autocast",
    "launched_processes",
    "is_main_process",
    "make_runner",
    "Runtime",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(batch: dict, device: torch.device | str) -> dict:
    """``batch`` with its tensors on ``device``.

    To a CUDA device a CPU tensor goes through pinned (page-locked) memory: only from
    there is a ``non_blocking`` copy asynchronous, so the next batch's transfer overlaps
    the current step instead of stalling it.
    """
    device = torch.device(device)
    pin = _pins(device)
    return {k: _move(v, device, pin) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _pins(device: torch.device) -> bool:
    return device.type == "cuda"


def _move(tensor: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    if pin and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def logits_and_labels(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on a dict batch; works for Hugging Face and plain PyTorch models."""
    if not isinstance(batch, dict) or "labels" not in batch:
        raise TypeError("batches must be dicts with a 'labels' entry (see ftlib.data.make_loader); "
                        f"got {type(batch).__name__}.")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if set(inputs) == {"pixel_values"} and not hasattr(model, "config"):
        out = model(inputs["pixel_values"])
    else:
        out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out
    return logits, batch["labels"]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (the CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


@contextlib.contextmanager
def reproducible(device: torch.device | str):
    """Deterministic GPU kernels inside the block, where the backend has them.

    On CUDA, cuDNN's autotuner picks different (and differently rounding) convolution
    algorithms from run to run, and cuBLAS splits reductions nondeterministically unless
    told a workspace size. Inside the block both are pinned down and PyTorch warns about
    any remaining nondeterministic operation (``warn_only``: some, such as
    ``index_add_`` on CUDA, have no deterministic version). The previous settings come
    back afterwards. On the CPU nothing changes: its kernels are deterministic already.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts a handle
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[0], before[1]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])
        if before[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True where the CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX).

    Read from the CPU's flags, not assumed: on AVX2-only CPUs PyTorch emulates bf16 and
    autocast makes training slower, not faster. False where the flags cannot be read.
    """
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: what ``precision`` means on ``device``.

    ``"auto"`` picks bf16 where the hardware runs it natively (a CUDA GPU with bf16, from
    Ampere on; a CPU with AVX-512 BF16 or AMX whose PyTorch dispatches AVX-512 kernels),
    fp16 with a gradient scaler on older CUDA GPUs, and fp32 everywhere else (CPUs with
    AVX2 only, Apple's MPS).
    """
    arguments.one_of(precision, "precision", PRECISIONS)
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device.type == "cpu":
        native = cpu_has_native_bf16() and torch.backends.cpu.get_cpu_capability() == "AVX512"
        return "bf16" if native else "fp32"
    return "fp32"


def autocast(precision: str, device: torch.device | str):
    """The autocast context for a resolved ``precision`` (nothing at all for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def launched_processes() -> int:
    """How many processes ``accelerate launch`` (or ``torchrun``) started; 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the process that writes files and prints (rank 0, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


class _OneProcess:
    """Steps of a single process: plain PyTorch, with a gradient scaler for fp16."""

    num_processes, is_main_process = 1, True

    def __init__(self, device: torch.device, precision: str) -> None:
        self.device, self.precision = device, precision
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def prepare(self, model: nn.Module, *objects):
        model.to(self.device)
        return (model, *objects)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def autocast(self):
        return autocast(self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer, parameters, clip_grad_norm: float | None) -> None:
        """Clip (on unscaled gradients) and step; an fp16 step with inf/NaN gradients is skipped."""
        if self.scaler is not None:
            if clip_grad_norm:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
            return
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        optimizer.step()

    def shards(self, loader) -> bool:
        return False

    def gather_for_metrics(self, values):
        return values

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def sync_buffers(self, model: nn.Module) -> None:
        pass

    def close(self) -> None:
        pass


class _Accelerated(_OneProcess):
    """Steps of one of several processes, through a Hugging Face ``Accelerator``.

    ``prepare`` wraps the model in DistributedDataParallel (gradients averaged over the
    processes in ``backward``), gives each process its share of every DataLoader, and
    wraps the optimizer and scheduler (the scheduler steps once per process per step:
    its length was counted on the whole training loader).
    """

    def __init__(self, device: torch.device, precision: str, *, find_unused_parameters: bool = False) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs

        mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
        state = AcceleratorState._shared_state
        if state and state.get("_mixed_precision") not in (None, mixed):
            AcceleratorState._reset_state()  # another fit of this process ran at another precision
        self.accelerator = Accelerator(
            mixed_precision=mixed, cpu=device.type == "cpu",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])
        self.device, self.precision, self.scaler = self.accelerator.device, precision, None
        self.num_processes = self.accelerator.num_processes
        self.is_main_process = self.accelerator.is_main_process

    def prepare(self, model: nn.Module, *objects):
        return self.accelerator.prepare(model, *objects)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def autocast(self):
        return self.accelerator.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)  # scaled for fp16; DDP averages the gradients

    def step(self, optimizer, parameters, clip_grad_norm: float | None) -> None:
        if clip_grad_norm:
            self.accelerator.clip_grad_norm_(parameters, clip_grad_norm)  # unscales fp16 first
        optimizer.step()  # accelerate's optimizer skips a step whose fp16 gradients overflowed

    def shards(self, loader) -> bool:
        """Whether ``loader`` was given to :meth:`prepare` (each process then sees its share)."""
        return any(loader is prepared for prepared in self.accelerator._dataloaders)

    def gather_for_metrics(self, values):
        return self.accelerator.gather_for_metrics(values)

    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(values, reduction="sum")

    def sync_buffers(self, model: nn.Module) -> None:
        """The main process's buffers (BatchNorm statistics) everywhere.

        DDP sends them at the start of each forward pass, so after an epoch's last step
        every process holds the statistics of its own last batch; validation and the
        kept weights must not depend on which process computed them.
        """
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)

    def close(self) -> None:
        self.accelerator.free_memory()  # drop its references to the model and optimizer


def make_runner(device: torch.device | str | None, precision: str, *, one_process: bool = False,
                find_unused_parameters: bool = False):
    """How ``fit`` runs its steps here: one process, or one of those ``accelerate launch`` started.

    ``precision`` is resolved for the device (see :func:`resolve_precision`);
    ``one_process`` keeps to this process even under ``accelerate launch``.
    """
    device = torch.device(device) if device is not None else default_device()
    if launched_processes() > 1 and not one_process:
        return _Accelerated(device, resolve_precision(precision, device), find_unused_parameters=find_unused_parameters)
    return _OneProcess(device, resolve_precision(precision, device))


@dataclass(frozen=True)
class Runtime:
    """How a run executes: where, at what precision, with deterministic GPU kernels or not.

    ``fit(..., runtime=Runtime(...))`` takes it; the default, ``Runtime()``, trains in
    fp32 on :func:`default_device` (a GPU if there is one) with deterministic kernels.
    None of it is a technique: on a CPU, at the default fp32 (or ``"auto"``, fp32 on
    CPUs without native bf16), it changes nothing that is learned.

    Parameters
    ----------
    device : torch.device, str or None
        Where to train; None: :func:`default_device`.
    precision : str
        "fp32", "bf16", "fp16" (autocast; fp16 with a gradient scaler) or "auto" (what
        the hardware runs natively, see :func:`resolve_precision`).
    deterministic : bool
        With a seed, deterministic GPU kernels (:func:`reproducible`), so that a re-run
        gives the same model; False lets CUDA pick its fastest kernels (what they cost:
        docs/scaling.md). No effect on a CPU, whose kernels are deterministic already.
    """

    device: torch.device | str | None = None
    precision: str = "fp32"
    deterministic: bool = True

    def __post_init__(self) -> None:
        arguments.one_of(self.precision, "precision", PRECISIONS)

    def runner(self, *, find_unused_parameters: bool = False):
        """The runner that executes ``fit``'s steps (see :func:`make_runner`)."""
        return make_runner(self.device, self.precision, find_unused_parameters=find_unused_parameters)
