"""Step 2: preparing the data - real data sets offline, clean splits, batches; or your own files.

One import path for the step (``from ftlib.data import load_dataset, split_dataset,
make_loader``), in six parts to read in this order:

1. ``registry.py``: the registered data sets, loaded offline from the packages that carry
   them (:class:`TaskData`, ``DATASETS``, :func:`load_dataset`);
2. ``splits.py``: duplicates removed, then stratified, grouped and seeded splits
   (:func:`split_dataset`);
3. ``batches.py``: images prepared for a model, texts padded to the batch's longest,
   batches grouped by length, and :func:`make_loader`, a DataLoader prepared the way a
   given model expects;
4. ``files.py``: your own data, a CSV/TSV/JSON Lines file or a folder of images per class,
   as the same :class:`TaskData` (:func:`load_data`, :func:`inspect_data`, :class:`DataError`).
5. ``chats.py``: instruction data for a generative model, your own files (prompt-completion,
   messages, or Alpaca's instruction/input/output) or ``bbc-headlines``, as conversations
   (:class:`ChatData`, :func:`load_chats`, :func:`chat_format`, :func:`check_messages`),
   deduplicated and split by groups (:func:`split_chats`).
6. ``pairs.py``: preference pairs for preference tuning (DPO), TRL's prompt/chosen/rejected
   files in the standard or conversational format (:class:`PairData`, :func:`load_pairs`,
   :func:`looks_like_pairs`), deduplicated and split by groups (:func:`split_pairs`).

Names are imported on first use, so ``ftlib datasets`` stays fast: the registry and the
splits need only numpy, the batches need torch and ``ftlib.models``.
"""
from importlib import import_module

_PARTS = {
    "registry": ["DatasetSpec", "DATASETS", "TaskData", "MissingDatasetError", "load_dataset",
                 "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES"],
    "splits": ["Splits", "deduplicate", "stratified_split", "balanced_subset", "stratified_subset", "split_dataset"],
    "batches": ["prepare_images", "collate_text", "collate_images", "LengthGroupedBatchSampler", "text_lengths",
                "make_loader"],
    "files": ["load_data", "inspect_data", "DataError"],
    "chats": ["ChatData", "load_chats", "split_chats", "chat_format", "check_messages"],
    "pairs": ["PairData", "load_pairs", "split_pairs", "looks_like_pairs"],
}
_PART_OF = {name: part for part, names in _PARTS.items() for name in names}

__all__ = list(_PART_OF)


def __getattr__(name):
    if name in _PART_OF:
        value = getattr(import_module(f"{__name__}.{_PART_OF[name]}"), name)
        globals()[name] = value  # imported once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
