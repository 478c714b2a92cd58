"""LoRA (Hu et al. 2021; peft): low-rank adapters on the attention query and value, and the new head.

:func:`lora` is the ``lora`` technique for classifiers (its rank: the default of ``r``).
``ftlib finetune`` on a generative model runs LoRA too, through ``ftlib.pipeline_llm`` and
``ftlib.generative.sft.add_lora``, on every linear layer of its blocks and at a larger rank,
:data:`GENERATIVE_RANK`; ``--lora-rank`` overrides either.
"""
from __future__ import annotations

import warnings
from typing import Sequence

from ftlib import arguments
from ftlib.techniques._registry import entry

__all__ = ["lora", "GENERATIVE_RANK"]

# The generative job's rank (ftlib.pipeline_llm: alpha 2 x rank, every linear layer of the
# blocks), where a classifier's is lora's own ``r``.
GENERATIVE_RANK = 16


def lora(model, train_loader, val_loader=None, *, epochs=3, lr=1e-3, r=8, lora_alpha=16, lora_dropout=0.1,
         target_modules: Sequence[str] = ("query", "value"), seed=0, progress=False, **fit_kwargs) -> dict:
    """LoRA (Hu et al. 2021) with peft: low-rank adapters on the attention query and value.

    The pretrained weights stay frozen; each targeted ``W`` becomes ``W + B A * alpha/r``
    with ``A`` (r x d) and ``B`` (d x r, zero at start) trainable. The new head trains
    too. Adapters start at zero and are few, so they want a larger ``lr`` than full
    fine-tuning. Returns the peft model as ``"model"`` and the trainable share.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    from ftlib.heads import find_head
    from ftlib.models import count_parameters
    from ftlib.optim import adamw
    from ftlib.train import fit, set_seed

    if getattr(model, "base_model_prefix", None) is None:
        raise ValueError(f"The lora technique needs a Hugging Face transformer (its attention has "
                         f"{list(target_modules)} projections); got {type(model).__name__}. Use "
                         "another technique for image models.")
    arguments.integer(r, "r", meaning="the LoRA rank")
    total_before = count_parameters(model)[1]
    head_name, _ = find_head(model)
    set_seed(seed)  # A is initialised randomly
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                        target_modules=list(target_modules), modules_to_save=[head_name])
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5; harmless
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
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
