"""LoRA (Hu et al. 2021; peft): low-rank adapters on the attention query and value, and the new head.

:func:`add_lora` is the one place ftlib puts adapters on a model, for both kinds:

* :func:`lora`, the ``lora`` technique for classifiers: adapters on the attention query
  and value (its rank: the default of ``r``), the new head trained whole;
* ``ftlib.generative.sft.add_lora`` for a generative model (``ftlib.pipeline_llm``, notebook
  09): adapters on every linear layer of the blocks at a larger rank, :data:`GENERATIVE_RANK`,
  alpha twice the rank, no dropout.

``--lora-rank`` overrides either rank.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Sequence

from ftlib import arguments
from ftlib.techniques._registry import entry

__all__ = ["lora", "add_lora", "quiet_peft", "GENERATIVE_RANK", "GENERATIVE_TARGETS"]

# The generative job's adapters (ftlib.generative.sft.add_lora): rank, alpha 2 x rank, and
# every linear layer of the blocks (attention and MLP; not the output layer).
GENERATIVE_RANK = 16
GENERATIVE_TARGETS = "all-linear"


@contextlib.contextmanager
def quiet_peft():
    """peft reads transformers' deprecated ``is_gradient_checkpointing``: a FutureWarning that
    is theirs, not the learner's, shown in every notebook that adds LoRA. Silence that one only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def add_lora(model, *, r: int, alpha: float, dropout: float, target_modules: str | Sequence[str], task_type: str,
             modules_to_save: Sequence[str] | None = None):
    """Wrap ``model`` with peft LoRA adapters on ``target_modules`` and freeze everything else.

    Each targeted ``Linear`` W gets a trainable low-rank update ``(alpha / r) * B @ A``
    (A: r x in, B: out x r, B starting at zero, so the model starts unchanged). The
    modules in ``modules_to_save`` (a classifier's new head) train whole. ``task_type`` is
    peft's: ``"SEQ_CLS"`` for a classifier, ``"CAUSAL_LM"`` for a generative model.
    """
    from peft import LoraConfig, get_peft_model

    arguments.integer(r, "r", meaning="the LoRA rank")
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        modules_to_save=list(modules_to_save) if modules_to_save else None)
    with quiet_peft():
        return get_peft_model(model, config)


def lora(model, train_loader, val_loader=None, *, epochs=3, lr=1e-3, r=8, lora_alpha=16, lora_dropout=0.1,
         target_modules: Sequence[str] = ("query", "value"), seed=0, progress=False, **fit_kwargs) -> dict:
    """LoRA (Hu et al. 2021) with peft: low-rank adapters on the attention query and value.

    The pretrained weights stay frozen; each targeted ``W`` becomes ``W + B A * alpha/r``
    with ``A`` (r x d) and ``B`` (d x r, zero at start) trainable. The new head trains
    too. Adapters start at zero and are few, so they want a larger ``lr`` than full
    fine-tuning. Returns the peft model as ``"model"`` and the trainable share.
    """
    from ftlib.heads import find_head
    from ftlib.models import count_parameters
    from ftlib.optim import adamw
    from ftlib.train import fit, set_seed

    if getattr(model, "base_model_prefix", None) is None:
        raise ValueError(f"The lora technique needs a Hugging Face transformer (its attention has "
                         f"{list(target_modules)} projections); got {type(model).__name__}. Use "
                         "another technique for image models.")
    total_before = count_parameters(model)[1]
    head_name, _ = find_head(model)
    set_seed(seed)  # A is initialised randomly
    peft_model = add_lora(model, r=r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules,
                          task_type="SEQ_CLS", modules_to_save=[head_name])
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = adamw([
        {"params": [p for p in trainable if p.ndim >= 2], "lr": lr, "weight_decay": 0.01},
        {"params": [p for p in trainable if p.ndim < 2], "lr": lr, "weight_decay": 0.0},
    ])
    history = fit(peft_model, train_loader, val_loader, epochs=epochs, lr=lr, optimizer=optimizer, seed=seed,
                  progress=progress, **fit_kwargs)
    n_trainable = sum(p.numel() for p in trainable)
    return {"history": history, "model": peft_model, "trainable_parameters": n_trainable,
            "total_parameters": total_before, "trainable_share": n_trainable / total_before}


TECHNIQUE = entry("lora", lora, "LoRA adapters (rank {r}) on attention query/value + head, lr {lr_factor:g}x",
                  ["r"], lr_factor=10.0, text_only=True)
