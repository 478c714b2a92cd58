"""Your own data: tables of texts and labels, folders of images per class, and bad input."""
import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from ftlib.data import split_dataset
from ftlib.data import DataError, inspect_data, load_data

REVIEWS = [("A moving, funny film.", "pos"), ("Dull and far too long.", "neg"), ("I loved every minute.", "pos"),
           ("Flat acting, no plot.", "neg"), ("A delight from start to end.", "pos"), ("Boring.", "neg")] * 10


def _digest(path):
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _csv(tmp_path, rows, header="review,sentiment", name="reviews.csv", sep=","):
    path = tmp_path / name
    path.write_text(header.replace(",", sep) + "\n" + "".join(f'"{t}"{sep}{y}\n' for t, y in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("sep, name", [(",", "reviews.csv"), ("\t", "reviews.tsv")])
def test_a_csv_or_tsv_with_common_column_names(tmp_path, sep, name):
    rows = [(f"{t} ({i})", y) for i, (t, y) in enumerate(REVIEWS)]
    path = _csv(tmp_path, rows, name=name, sep=sep)
    before = _digest(path)
    data = load_data(path)
    assert data.task == "text" and data.name == "reviews"
    assert data.class_names == ["neg", "pos"] and len(data) == len(rows)
    assert data.inputs[0] == rows[0][0] and data.class_names[data.labels[0]] == "pos"
    splits = split_dataset(data, train_size=None, val_size=None, test_size=None, seed=0)
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(rows)
    assert _digest(path) == before  # read, never written


def test_jsonl_with_named_columns_integer_labels_and_groups(tmp_path):
    path = tmp_path / "speeches.jsonl"
    rows = [{"speech": f"words {i}", "party": i % 3, "speaker": f"s{i // 4}"} for i in range(60)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_data(path, text_column="speech", label_column="party", group_column="speaker")
    assert data.class_names == ["0", "1", "2"] and list(data.labels[:4]) == [0, 1, 2, 0]
    splits = split_dataset(data, train_size=None, val_size=None, test_size=None, seed=0)
    speakers = [set(s.groups.tolist()) for s in (splits.train, splits.val, splits.test)]
    assert not (speakers[0] & speakers[1] or speakers[0] & speakers[2] or speakers[1] & speakers[2])


def _image(path, size, mode):
    rng = np.random.default_rng(len(str(path)))
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def test_an_image_folder_of_mixed_sizes_and_modes(tmp_path):
    root = tmp_path / "pets"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i, (size, mode) in enumerate([((40, 30), "RGB"), ((64, 64), "L"), ((17, 90), "RGB")]):
            _image(root / cls / f"{i}.{'png' if i % 2 else 'jpg'}", size, mode)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    before = _digest(root)
    data = load_data(root)
    assert data.task == "image" and data.class_names == ["cat", "dog"]
    assert data.inputs.shape == (6, 128, 128, 3) and data.inputs.dtype == np.uint8
    assert list(data.labels) == [0, 0, 0, 1, 1, 1]
    report = inspect_data(root)
    assert report["skipped"] == {"not an image file": 1, "could not be opened": 1}
    assert any("skipped" in w for w in report["warnings"])
    assert _digest(root) == before


def test_inspect_reports_columns_classes_duplicates_and_warnings(tmp_path):
    rows = REVIEWS + [("x " * 80, "pos"), ("Rare class here.", "meh")]
    report = inspect_data(_csv(tmp_path, rows))
    assert report["columns"] == ["review", "sentiment"]
    assert report["duplicates"] == len(REVIEWS) - 6  # the same six reviews, ten times
    assert report["classes"] == {"meh": 1, "neg": 3, "pos": 4}
    assert sum(report["splits"].values()) == 8
    warnings = " | ".join(report["warnings"])
    assert "class 'meh' has 1 example(s)" in warnings and "will be truncated" in warnings


def _write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, options, message", [
    (lambda d: d / "missing.csv", {}, "No such file or folder"),
    (lambda d: _csv(d, REVIEWS, header="review,stars_given"), {}, "No label column"),
    (lambda d: _csv(d, [("good", "pos"), ("great", "pos")]), {}, "Only one class ('pos')"),
    (lambda d: _write(d / "empty.csv", b""), {}, "is empty"),
    (lambda d: _write(d / "latin1.csv", "text,label\nd\xe9j\xe0 vu,a\n".encode("latin-1")), {}, "is not UTF-8"),
    (lambda d: _csv(d, [(f"house {i}", f"{i * 1.37:.2f}") for i in range(50)], header="text,price"),
     {"label_column": "price"}, "look like a numeric target"),
    (lambda d: _write(d / "data.xlsx", b"PK"), {}, "expected a .csv, .tsv or .jsonl"),
    (lambda d: _write(d / "bad.jsonl", b'{"text": "a", "label": 1}\n[1, 2]\n'), {}, "line 2: expected a JSON object"),
    (lambda d: (d / "one" / "a").mkdir(parents=True) or d / "one", {}, "at least two classes"),
])
def test_bad_input_is_one_clear_line(tmp_path, make, options, message):
    path = make(tmp_path)
    before = _digest(path) if path.exists() else None
    with pytest.raises(DataError, match=re.escape(message)) as info:
        load_data(path, **options)
    assert "\n" not in str(info.value)
    assert (_digest(path) if path.exists() else None) == before


def test_separate_validation_and_test_files(tmp_path):
    from ftlib.data.files import load_splits

    train_rows = [(f"{t} ({i})", y) for i, (t, y) in enumerate(REVIEWS)]
    train = _csv(tmp_path, train_rows, name="train.csv")
    # The test file names its classes in another order and shares one review with training.
    test = _csv(tmp_path, [("an unseen great one", "pos"), ("an unseen bad one", "neg"), train_rows[0]],
                name="test.csv")
    data, splits = load_splits(train, test_path=test, seed=0)
    assert splits.test.class_names == data.class_names == ["neg", "pos"]
    assert [data.class_names[y] for y in splits.test.labels] == ["pos", "neg", "pos"]
    assert train_rows[0][0] not in splits.train.inputs  # it is a test example now: no leak
    assert len(splits.train) + len(splits.val) == len(train_rows) - 1  # the rest all trains or validates
    val = _csv(tmp_path, [("fine", "pos"), ("poor", "neg")], name="val.csv")
    _, both = load_splits(train, val_path=val, test_path=test, seed=0)
    assert len(both.val) == 2 and len(both.train) == len(train_rows) - 1
    odd = _csv(tmp_path, [("what", "maybe")] * 2 + [("x", "pos")], name="odd.csv")
    with pytest.raises(DataError, match="classes the training data lacks: 'maybe'"):
        load_splits(train, test_path=odd)
