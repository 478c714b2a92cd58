"""Keep a fine-tuned model and use it: save, reload, predict.

What a run saves is in the format its ecosystem expects, so it is usable without ftlib:

* a Hugging Face text classifier: ``save_pretrained`` (``config.json`` with ``id2label`` /
  ``label2id``, ``model.safetensors``) and its tokenizer, so
  ``transformers.pipeline("text-classification", model=FOLDER)`` works offline;
* a LoRA model (peft): the adapter alone in ``FOLDER/adapter`` (a few hundred kB) and,
  with ``merge=True``, the merged model in ``FOLDER`` as above;
* an image model: ``model.safetensors`` (a plain state dict) and ``ftlib.json`` naming the
  architecture, image size, normalization and class names.

Every folder also gets ``ftlib.json`` (task, base model, classes, preprocessing), which
:func:`load_finetuned` reads to rebuild the model and its preprocessing.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["save_finetuned", "load_finetuned", "read_manifest", "model_folder", "Finetuned", "MANIFEST"]

MANIFEST = "ftlib.json"


def save_finetuned(model: nn.Module, folder, *, model_name: str, class_names: Sequence[str], tokenizer=None,
                   max_length: int = 64, image_size: int | None = None, merge: bool = False) -> Path:
    """Save ``model`` (fine-tuned from the registry's ``model_name``) into ``folder``.

    Returns the folder. For text, ``tokenizer`` is required; for images, ``image_size``.
    """
    from ftlib.models import get_model_spec

    spec = get_model_spec(model_name, allow_download=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [str(c) for c in class_names]
    manifest = {"format": 1, "task": spec.task, "base_model": model_name, "class_names": names}
    if spec.task == "text":
        if tokenizer is None:
            raise ValueError("save_finetuned needs the tokenizer of a text model, to save it beside the weights.")
        saved = model
        if hasattr(model, "merge_and_unload"):  # a peft model: the adapter alone, then maybe merged
            model.save_pretrained(folder / "adapter")
            manifest["adapter"] = "adapter"
            # merge_and_unload changes the model it is called on: merge a copy, keep the adapter.
            # An adapter alone needs the base's pretrained weights to mean anything: a base
            # without them (tiny-bert, random) is saved merged too.
            saved = copy.deepcopy(model).merge_and_unload() if merge or not spec.pretrained else None
        if saved is not None:
            from transformers.utils import logging as hf_logging

            config = saved.config
            config.id2label = dict(enumerate(names))
            config.label2id = {n: i for i, n in enumerate(names)}
            hf_logging.disable_progress_bar()  # "Writing model shards" on stderr
            try:
                saved.save_pretrained(folder, safe_serialization=True)
            finally:
                hf_logging.enable_progress_bar()
            manifest["weights"] = "model.safetensors"
        tokenizer.save_pretrained(folder)
        manifest["max_length"] = int(max_length)
    elif spec.task == "image":
        from safetensors.torch import save_file

        if image_size is None:
            raise ValueError("save_finetuned needs the image_size the model was trained at.")
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        manifest.update(weights="model.safetensors", image_size=int(image_size),
                        mean=list(spec.mean or (0.5,) * 3), std=list(spec.std or (0.5,) * 3))
    else:
        raise ValueError(f"save_finetuned saves classifiers (text or image); {model_name!r} is a {spec.task} model.")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return folder


@dataclass
class Finetuned:
    """A reloaded model with its preprocessing: ``predict(inputs)`` gives labels and probabilities."""

    model: nn.Module
    task: str
    class_names: list[str]
    tokenizer: object = None
    max_length: int = 64
    image_size: int | None = None
    mean: tuple | None = None
    std: tuple | None = None

    @torch.no_grad()
    def probabilities(self, inputs: Sequence, batch_size: int = 64) -> np.ndarray:
        """Class probabilities, shape ``(len(inputs), num_classes)``; texts or images (paths or arrays)."""
        from ftlib.devices import to_device

        self.model.eval()
        device = next(self.model.parameters()).device  # a model fit left on a GPU predicts there
        inputs = list(inputs)
        # Texts of similar length batch together (less padding), as in training; the
        # rows are put back in the order given.
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i])) if self.task == "text" else \
            list(range(len(inputs)))
        out = []
        for start in range(0, len(inputs), batch_size):
            chunk = [inputs[i] for i in order[start:start + batch_size]]
            if self.task == "text":
                if not all(isinstance(t, str) for t in chunk):
                    raise TypeError("This is a text model: give it strings.")
                batch = self.tokenizer(chunk, padding="longest", truncation=True, max_length=self.max_length,
                                       return_tensors="pt")
                logits = self.model(**to_device(dict(batch), device)).logits
            else:
                from ftlib.data.batches import prepare_images

                images = np.stack([_read_image(x, self.image_size) for x in chunk])
                pixels = prepare_images(images, self.image_size, self.mean, self.std)
                logits = self.model(to_device({"pixel_values": pixels}, device)["pixel_values"])
            out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, len(self.class_names)))
        probs = np.empty((len(inputs), len(self.class_names)), dtype=np.float32)
        probs[order] = np.concatenate(out)
        return probs

    def predict(self, inputs: Sequence, *, top_k: int = 1, batch_size: int = 64) -> list[dict]:
        """One dict per input: ``label``, ``probability`` and ``top_k`` as ``[(label, probability), ...]``."""
        probs = self.probabilities(inputs, batch_size)
        k = max(1, min(int(top_k), len(self.class_names)))
        results = []
        for row in probs:
            order = np.argsort(-row)[:k]
            top = [(self.class_names[i], float(row[i])) for i in order]
            results.append({"label": top[0][0], "probability": top[0][1], "top_k": top})
        return results


def _read_image(item, size: int) -> np.ndarray:
    """An image file as RGB at the model's size (grey repeated to three channels, as in training)."""
    if isinstance(item, np.ndarray):
        return item
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(item) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{item}: not an image this model can read ({type(err).__name__}).") from None


def model_folder(path) -> Path:
    """The folder holding ``ftlib.json``: ``path`` itself or the ``model/`` of a run folder."""
    folder = Path(path)
    if (folder / "model" / MANIFEST).is_file():  # a run folder
        folder = folder / "model"
    if not (folder / MANIFEST).is_file():
        raise ValueError(f"{path} holds no saved model ({MANIFEST} not found); give a run folder of "
                         "`ftlib finetune` or the model folder inside it.")
    return folder


def read_manifest(path) -> dict:
    """What a saved model is (task, classes, preprocessing), without loading its weights."""
    return json.loads((model_folder(path) / MANIFEST).read_text())


def load_finetuned(path) -> Finetuned:
    """Reload a folder written by :func:`save_finetuned` (or a run folder holding ``model/``)."""
    from ftlib.models import load_model

    folder = model_folder(path)
    manifest = read_manifest(folder)
    names = manifest["class_names"]
    if manifest["task"] == "text":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        tokenizer = AutoTokenizer.from_pretrained(folder)
        if "weights" in manifest:
            hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr
            try:
                model = AutoModelForSequenceClassification.from_pretrained(folder)
            finally:
                hf_logging.enable_progress_bar()
        else:  # the adapter alone, on the registry's base model
            import warnings

            from peft import PeftModel

            with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5; harmless
                warnings.simplefilter("ignore", FutureWarning)
                model = PeftModel.from_pretrained(load_model(manifest["base_model"], num_classes=len(names)),
                                                  folder / manifest["adapter"])
        return Finetuned(model.eval(), "text", names, tokenizer, manifest.get("max_length", 64))
    from safetensors.torch import load_file

    model = load_model(manifest["base_model"], num_classes=len(names), pretrained=False)
    model.load_state_dict(load_file(str(folder / manifest["weights"])))
    return Finetuned(model.eval(), "image", names, image_size=manifest["image_size"],
                     mean=tuple(manifest["mean"]), std=tuple(manifest["std"]))
