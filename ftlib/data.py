"""Step 2: preparing the data - real data sets offline, clean splits, batches.

One import path for the step, in four modules to read in this order:

* ``ftlib.datasets``: the registered data sets, loaded offline from the packages that
  carry them (:class:`TaskData`, ``DATASETS``, :func:`load_dataset`);
* ``ftlib.splits``: duplicates removed, then stratified, grouped and seeded splits
  (:func:`split_dataset`);
* ``ftlib.batches``: images prepared for a model, texts padded to the batch's longest,
  batches grouped by length;
* ``ftlib.loaders``: :func:`make_loader`, a DataLoader prepared the way a given model
  expects. It needs ``ftlib.models``, so it sits above both the models and the data.
"""
from ftlib.batches import (LengthGroupedBatchSampler, collate_images, collate_text, prepare_images,
                           text_lengths)
from ftlib.datasets import (DATASETS, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, DatasetSpec, MissingDatasetError,
                            TaskData, load_dataset)
from ftlib.loaders import make_loader
from ftlib.splits import Splits, balanced_subset, deduplicate, split_dataset, stratified_split, stratified_subset

__all__ = [
    "DatasetSpec",
    "DATASETS",
    "TaskData",
    "MissingDatasetError",
    "Splits",
    "load_dataset",
    "deduplicate",
    "stratified_split",
    "balanced_subset",
    "stratified_subset",
    "split_dataset",
    "prepare_images",
    "collate_text",
    "collate_images",
    "LengthGroupedBatchSampler",
    "text_lengths",
    "make_loader",
]
