"""Step 2 with your own data: a table of texts and labels, or a folder of images per class.

``load_data(path)`` reads what people have and returns the :class:`ftlib.data.TaskData`
that the registered data sets give, so splitting, batching and training are the same:

* a CSV, TSV or JSON Lines file with a text column and a label column, found by their
  usual names (``text``/``sentence``/``review``..., ``label``/``category``/``class``...)
  or named explicitly; labels may be strings or integers; an optional ``group`` column
  keeps related rows (several reviews of one movie) inside one split;
* a folder with one sub-folder per class (``PATH/<class>/*.png``), as torchvision's
  ``ImageFolder`` and fastai expect: any size, grey or colour (resized to one size,
  colour kept), files that are not images skipped and counted.

``inspect_data(path)`` says what would be used (columns, classes and counts, duplicates,
split sizes) and warns about what will go wrong; on instruction data for a generative
model (``ftlib/data/chats.py``) it describes the conversations, on preference pairs
(``ftlib/data/pairs.py``) the pairs. Bad input raises
:class:`DataError`, one line that says what was wrong and how to fix it; the user's files
are only read.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from ftlib.data.chats import inspect_chats, looks_like_chats
from ftlib.data.pairs import inspect_pairs, looks_like_pairs
from ftlib.data.registry import DataError, TaskData
from ftlib.data.splits import Splits, balanced_subset, deduplicate, drop_overlap, split_dataset

__all__ = ["DataError", "load_data", "load_table", "read_texts", "load_image_folder", "inspect_data",
           "TEXT_COLUMNS", "LABEL_COLUMNS", "IMAGE_SUFFIXES"]

TEXT_COLUMNS = ("text", "sentence", "review", "content", "document", "body", "comment", "message", "tweet")
LABEL_COLUMNS = ("label", "labels", "category", "class", "target", "sentiment", "topic", "y")
GROUP_COLUMNS = ("group", "groups", "group_id")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".jsonl": None, ".ndjson": None}


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    """Column names and rows of a CSV/TSV/JSON Lines file (values as read)."""
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet).") from None
    except OSError as err:
        raise DataError(f"Cannot read {path}: {err.strerror}.") from None
    if not text.strip():
        raise DataError(f"{path} is empty.")
    if TABLE_SUFFIXES[suffix] is None:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {number}: not a JSON object ({err.msg}); JSON Lines has one "
                                "object per line, e.g. {\"text\": \"...\", \"label\": \"...\"}.") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}.")
            rows.append(row)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return columns, rows
    reader = csv.DictReader(text.splitlines(), delimiter=TABLE_SUFFIXES[suffix])
    if not reader.fieldnames:
        raise DataError(f"{path} has no header row; its first line must name the columns, e.g. text,label.")
    return [c.strip() for c in reader.fieldnames], [{(k or "").strip(): v for k, v in r.items()} for r in reader]


def _column(columns: list[str], given: str | None, known: tuple[str, ...], what: str, option: str, path: Path):
    if given is not None:
        if given not in columns:
            raise DataError(f"{path} has no column {given!r} ({option}); its columns: {', '.join(columns)}.")
        return given
    lower = {c.lower(): c for c in columns}
    for name in known:
        if name in lower:
            return lower[name]
    if what == "group":
        return None
    raise DataError(f"No {what} column in {path} (looked for {', '.join(known)}); its columns: "
                    f"{', '.join(columns)}. Name it with {option}.")


def _looks_numeric_target(values: list) -> bool:
    """Many distinct numbers with fractions: a regression target, not classes."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    distinct = set(numbers)
    return len(distinct) > 20 and any(not n.is_integer() for n in distinct)


def _class_labels(raw: list, path: Path, column: str) -> tuple[np.ndarray, list[str]]:
    if _looks_numeric_target(raw):
        raise DataError(f"The labels in column {column!r} of {path} look like a numeric target "
                        f"({len(set(raw))} distinct values with fractions), not classes: ftlib fine-tunes "
                        "classifiers. Bin them into classes first, or name another --label-column.")
    as_text = [str(v).strip() for v in raw]
    if all(t.lstrip("-").isdigit() for t in as_text):  # integer labels: keep their numeric order
        names = [str(n) for n in sorted({int(t) for t in as_text})]
        as_text = [str(int(t)) for t in as_text]
    else:
        names = sorted(set(as_text))
    if len(names) < 2:
        raise DataError(f"Only one class ({names[0]!r}) in column {column!r} of {path}: a classifier needs at "
                        "least two.")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[t] for t in as_text], dtype=np.int64), names


def _present(value) -> bool:
    return value is not None and str(value).strip() != ""


def load_table(path, *, text_column: str | None = None, label_column: str | None = None,
               group_column: str | None = None, name: str | None = None) -> TaskData:
    """A text-classification :class:`TaskData` from a CSV, TSV or JSON Lines file.

    Rows whose text or label is empty are skipped (``inspect_data`` counts them).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No such file: {path}.")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"{path}: expected a .csv, .tsv or .jsonl file (or a folder of images per class); "
                        f"got {path.suffix or 'no extension'}.")
    columns, rows = _rows(path)
    if not rows:
        raise DataError(f"{path} has a header but no rows.")
    text_col = _column(columns, text_column, TEXT_COLUMNS, "text", "--text-column", path)
    label_col = _column(columns, label_column, LABEL_COLUMNS, "label", "--label-column", path)
    group_col = _column(columns, group_column, GROUP_COLUMNS, "group", "--group-column", path)
    kept = [r for r in rows if _present(r.get(text_col)) and _present(r.get(label_col))]
    if not kept:
        raise DataError(f"No row of {path} has both a {text_col!r} and a {label_col!r} value.")
    labels, names = _class_labels([r[label_col] for r in kept], path, label_col)
    # A row without a group is a group of its own, not one big group of all such rows.
    groups = (np.array([str(r[group_col]) if _present(r.get(group_col)) else f"\0row {i}" for i, r in enumerate(kept)])
              if group_col else None)
    return TaskData(name or path.stem, "text", [str(r[text_col]).strip() for r in kept], labels, names, groups)


def read_texts(path, *, text_column: str | None = None) -> list[str]:
    """The texts of a CSV/TSV/JSON Lines file's text column (labels not needed): for predicting."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No such file: {path}.")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(f"{path}: expected a .csv, .tsv or .jsonl file; got {path.suffix or 'no extension'}.")
    columns, rows = _rows(path)
    column = _column(columns, text_column, TEXT_COLUMNS, "text", "--column", path)
    return [str(r[column]).strip() for r in rows if _present(r.get(column))]


def load_image_folder(path, *, size: int = 128, name: str | None = None) -> TaskData:
    """An image-classification :class:`TaskData` from ``PATH/<class>/<image files>``.

    Every image is converted to RGB and resized to ``size`` x ``size`` (the model's own
    size is applied later, when batches are made). Files that are not images, or that do
    not open, are skipped; ``skipped_`` on the result counts them by reason.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"No such folder: {path}.")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{path} has no class sub-folders; put each class's images in its own folder, "
                        f"e.g. {path}/cat/1.jpg and {path}/dog/2.jpg.")
    images, labels, skipped = [], [], Counter()
    for label, cls in enumerate(classes):
        for file in sorted(p for p in (path / cls).rglob("*") if p.is_file()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                skipped["not an image file"] += 1
                continue
            try:
                with Image.open(file) as im:
                    im = im.convert("RGB").resize((size, size), Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.uint8))
            except (UnidentifiedImageError, OSError, ValueError):
                skipped["could not be opened"] += 1
                continue
            labels.append(label)
    counts = Counter(labels)
    present = [classes[i] for i in sorted(counts)]
    if len(present) < 2:
        found = f"only {present[0]!r} has images" if present else "none has images"
        raise DataError(f"{path}: a classifier needs images of at least two classes; of {', '.join(classes)}, "
                        f"{found}.")
    data = TaskData(name or path.name, "image", np.stack(images), np.array(labels, dtype=np.int64), classes)
    data.skipped_ = dict(skipped)
    return data


def load_data(path, **options) -> TaskData:
    """:func:`load_table` for a file, :func:`load_image_folder` for a folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"No such file or folder: {path}.")
    if path.is_dir():
        return load_image_folder(path, **{k: v for k, v in options.items() if k in ("size", "name")})
    return load_table(path, **{k: v for k, v in options.items() if k != "size"})


def inspect_data(path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, max_words: int = 48,
                 **options) -> dict:
    """What :func:`load_data` would give and what to watch for, as data.

    Returns ``task``, ``classes`` (name -> count), ``examples``, ``duplicates``,
    ``splits`` (approximate train / validation / test sizes), ``columns`` (for tables),
    ``skipped`` (for image folders) and ``warnings``. Instruction data for a generative
    model (a file whose columns are a chat format, and no text or label column named) gets
    :func:`ftlib.data.chats.inspect_chats`'s report instead, ``task`` "text generation"; preference
    pairs (a ``chosen`` or ``rejected`` column) :func:`ftlib.data.pairs.inspect_pairs`'s, ``type`` "preference".
    """
    if not (options.get("text_column") or options.get("label_column")):
        if looks_like_pairs(path):
            return inspect_pairs(path)
        if looks_like_chats(path):
            return inspect_chats(path)
    data = load_data(path, **options)
    unique = deduplicate(data)
    counts = np.bincount(unique.labels, minlength=len(unique.class_names))
    n = len(unique)
    report = {"task": data.task, "examples": len(data), "duplicates": len(data) - n,
              "classes": {c: int(k) for c, k in zip(unique.class_names, counts)},
              "splits": {"train": n - round(n * val_fraction) - round(n * test_fraction),
                         "validation": round(n * val_fraction), "test": round(n * test_fraction)},
              "warnings": []}
    for name, k in zip(unique.class_names, counts):
        if k * min(val_fraction, test_fraction) < 1:
            report["warnings"].append(f"class {name!r} has {k} example(s): too few to appear in every split "
                                      f"(at least {int(np.ceil(1 / min(val_fraction, test_fraction)))} needed)")
    if data.task == "text":
        columns, _ = _rows(Path(path))
        report["columns"] = columns
        long = sum(len(t.split()) > max_words for t in unique.inputs)
        if long:
            report["warnings"].append(f"{long} text(s) have more than {max_words} words and will be truncated "
                                      "(raise --max-length to keep more, at a cost in time)")
        if data.groups is not None:
            report["groups"] = len(set(data.groups.tolist()))
    else:
        report["skipped"] = getattr(data, "skipped_", {})
        report["image_size"] = tuple(data.inputs.shape[1:3])
        for reason, k in report["skipped"].items():
            report["warnings"].append(f"{k} file(s) skipped: {reason}")
    return report


def _aligned(data: TaskData, class_names: list[str], path) -> TaskData:
    """``data`` with its labels renumbered to ``class_names`` (the training file's classes)."""
    unknown = sorted(set(data.class_names) - set(class_names))
    if unknown:
        raise DataError(f"{path} has classes the training data lacks: {', '.join(map(repr, unknown))}; the model "
                        f"can only learn {', '.join(map(repr, class_names))}.")
    index = np.array([class_names.index(name) for name in data.class_names], dtype=np.int64)
    return TaskData(data.name, data.task, data.inputs, index[data.labels], list(class_names), data.groups)


def _concat(a: TaskData, b: TaskData) -> TaskData:
    inputs = a.inputs + b.inputs if isinstance(a.inputs, list) else np.concatenate([a.inputs, b.inputs])
    groups = None if a.groups is None or b.groups is None else np.concatenate([a.groups, b.groups])
    return TaskData(a.name, a.task, inputs, np.concatenate([a.labels, b.labels]), a.class_names, groups)


def load_splits(path, *, val_path=None, test_path=None, seed: int = 0, train_size: int | None = None,
                val_size: int | None = None, test_size: int | None = None, **options):
    """``(data, Splits)`` for a user's own data, with optional separate validation / test files.

    Without them: the same deduplicated, stratified (and grouped) seeded split as the
    registered data sets. With them: those files are the validation / test sets (classes
    matched to the training file's by name), the training file's share that they replace
    trains too, and any training example that also appears in them is dropped (it would
    leak). ``None`` sizes keep whole splits.
    """
    data = load_data(path, **options)
    if val_path is None and test_path is None:
        return data, split_dataset(data, train_size=train_size, val_size=val_size, test_size=test_size, seed=seed)
    given = {key: _aligned(deduplicate(load_data(p, **options)), data.class_names, p)
             for key, p in (("val", val_path), ("test", test_path)) if p is not None}
    whole = split_dataset(data, train_size=None, val_size=None, test_size=None, seed=seed)
    train = whole.train
    for key in ("val", "test"):
        if key in given:
            train = _concat(train, getattr(whole, key))
    train = drop_overlap(train, *given.values())
    if train_size is not None:
        train = train.subset(balanced_subset(train.labels, min(train_size, len(train)), seed))
    return data, Splits(train, given.get("val", whole.val), given.get("test", whole.test))
