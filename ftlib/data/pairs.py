"""Step 2 for preference tuning (DPO): pairs of a chosen and a rejected answer, checked, and split clean.

``load_pairs(path)`` reads TRL's preference format, the columns ``prompt``, ``chosen`` and
``rejected``, in either of its two forms (one per file):

* **standard**: three texts, in JSON Lines or CSV/TSV;
* **conversational** (JSON Lines only): ``prompt`` a list of ``{"role", "content"}`` messages
  (an optional system turn, then user and assistant in turn, ending on the user), ``chosen``
  and ``rejected`` each a list holding one assistant message.

Each pair becomes an entry of a :class:`PairData`: the prompt as a conversation ending on the
user turn (a standard prompt is one user turn), the two answers as texts. An optional
``group`` column keeps related pairs in one split. The files are read and checked by the
helpers of ``ftlib/data/chats.py``, so bad input gets the same :class:`DataError`: one line
naming the file and the line; the user's files are only read.

``split_pairs`` removes duplicates and splits by groups with ``split_chats``'s rules: no
prompt and no chosen answer sits in two splits. ``inspect_pairs`` describes a file, with
how often the chosen answer is the longer one: DPO learns length as readily as quality.
No torch here: tokenizing and the loss are ``ftlib.generative.preference``'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ftlib.data.chats import (CHAT_SUFFIXES, PAIR_MARKERS, check_messages, csv_rows, first_columns,
                              first_occurrences, group_units, json_rows, normalized, prompt_key, read_text,
                              row_groups, shorten, split_indices, text_field)
from ftlib.data.registry import DataError

__all__ = ["PairData", "PAIR_COLUMNS", "PAIR_FORMATS", "LENGTH_BIAS_SHARE", "pair_format", "load_pairs",
           "split_pairs", "looks_like_pairs", "inspect_pairs"]

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
PAIR_FORMATS = ("standard", "conversational")
_ONE_ANSWER = '[{"role": "assistant", "content": "..."}]'
# inspect_pairs warns when the chosen answer is the longer one in more than this share of the
# pairs, or in less than 1 - this share (with ten pairs or more: fewer say nothing).
LENGTH_BIAS_SHARE = 0.75


@dataclass
class PairData:
    """Preference pairs to tune a generative model on: for each prompt, a chosen and a rejected answer.

    Each prompt is a conversation of ``{"role", "content"}`` messages ending on the user turn
    that both answers reply to (a standard-format prompt is that one turn); ``chosen`` and
    ``rejected`` are the answers' texts. ``format`` says how the file wrote the pairs.
    """

    name: str
    prompts: list[list[dict]]
    chosen: list[str]
    rejected: list[str]
    groups: np.ndarray | None = None  # pairs sharing a group stay in one split
    lines: list[int] | None = None  # each pair's 1-based line in its file
    format: str = "standard"  # or "conversational" (PAIR_FORMATS)
    task: ClassVar[str] = "text generation"

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: np.ndarray) -> "PairData":
        idx = np.asarray(idx, dtype=np.int64)
        return PairData(
            self.name, [self.prompts[i] for i in idx], [self.chosen[i] for i in idx], [self.rejected[i] for i in idx],
            None if self.groups is None else self.groups[idx],
            None if self.lines is None else [self.lines[i] for i in idx], self.format,
        )


def _check_columns(columns) -> None:
    columns = list(columns)
    missing = [c for c in PAIR_COLUMNS if c not in columns]
    if missing:
        hint = (" (TRL's implicit-prompt form, with the prompt inside chosen and rejected, is not read: give the "
                "prompt a column of its own)" if missing == ["prompt"] else "")
        raise DataError(f"missing {' and '.join(map(repr, missing))}: the preference format needs prompt, chosen "
                        f"and rejected; found: {', '.join(map(str, columns)) or 'none'}{hint}.")


def pair_format(row: dict) -> str:
    """The format of one JSON Lines row of preference pairs, "standard" or "conversational", or ``ValueError``.

    Standard: ``prompt``, ``chosen`` and ``rejected`` are texts; conversational: all three are
    lists of messages. Other columns are allowed and ignored (``group`` is used by :func:`load_pairs`).

    Examples
    --------
    >>> pair_format({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    'standard'
    """
    _check_columns(row)
    for column in PAIR_COLUMNS:
        if not isinstance(row[column], (str, list, type(None))):
            raise ValueError(f"{column!r} is a JSON {type(row[column]).__name__}, not text or a list of messages.")
    lists = [c for c in PAIR_COLUMNS if isinstance(row[c], list)]
    if lists and len(lists) < len(PAIR_COLUMNS):
        texts = [c for c in PAIR_COLUMNS if c not in lists]
        raise ValueError(f"{', '.join(map(repr, lists))} {'is a list' if len(lists) == 1 else 'are lists'} of "
                         f"messages but {', '.join(map(repr, texts))} {'is' if len(texts) == 1 else 'are'} text: "
                         "all three are texts (standard format) or all lists of messages (conversational).")
    return "conversational" if lists else "standard"


def _describe(row: dict) -> str:
    return "'prompt' is a list of messages" if isinstance(row.get("prompt"), list) else "'prompt' is text"


def _csv_format(header: list[str]) -> str:
    _check_columns(header)
    return "standard"  # a cell holds text, never a list of messages


def _answer(row: dict, column: str) -> str:
    """The text of a conversational answer: a list holding one assistant message."""
    value = row[column]
    message = value[0] if value else {"role": "assistant", "content": ""}  # [] is an empty answer
    if len(value) > 1:
        got = f"{len(value)} messages"
    elif not isinstance(message, dict) or "content" not in message:
        got = f"{str(message)[:60]!r}, not a {{\"role\", \"content\"}} message"
    elif message.get("role") != "assistant":
        got = f"a message from the {str(message.get('role'))[:40]}"
    else:
        return text_field({column: message["content"]}, column)
    raise ValueError(f"{column!r} holds {got}; in the conversational format it is one assistant message, "
                     f"{_ONE_ANSWER}.")


def _pair(row: dict, fmt: str) -> tuple[list[dict], str, str]:
    """The prompt (a conversation ending on the user), chosen and rejected of a row, or ``ValueError``."""
    if fmt == "standard":
        prompt = [{"role": "user", "content": text_field(row, "prompt")}]
        chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
    else:
        if not row["prompt"]:
            raise ValueError("empty 'prompt': nothing to answer.")
        prompt = check_messages(row["prompt"], ends_on="user")
        chosen, rejected = _answer(row, "chosen"), _answer(row, "rejected")
    if normalized(chosen) == normalized(rejected):
        raise ValueError("'chosen' and 'rejected' are the same answer (ignoring case and spacing): nothing to prefer.")
    return prompt, chosen, rejected


def load_pairs(path, *, name: str | None = None) -> PairData:
    """The preference pairs of a file in TRL's preference format, standard or conversational.

    Parameters
    ----------
    path : str or Path
        A JSON Lines file (``.jsonl``, ``.json``: one object per line) or a CSV/TSV file with
        a header (the standard format only), with the columns ``prompt``, ``chosen`` and
        ``rejected``; every line in the first line's format (:func:`pair_format`).
    name : str, optional
        The data set's name (default: the file's name without its extension).

    Returns
    -------
    PairData
        One pair per row, with ``lines`` (each pair's line in the file) and ``groups`` where
        the file has a ``group`` column (rows without one are their own group).

    Raises
    ------
    DataError
        One line saying what is wrong and where (file and line).

    Examples
    --------
    A line of each format::

        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}
        {"prompt": [{"role": "user", "content": "Capital of France?"}],
         "chosen": [{"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "assistant", "content": "Lyon."}]}
    """
    path = Path(path)
    text = read_text(path)
    if CHAT_SUFFIXES[path.suffix.lower()]:
        fmt, rows = csv_rows(path, text, _csv_format)
    else:
        fmt, rows = json_rows(path, text, pair_format, _describe)
    prompts, chosen, rejected = [], [], []
    for number, row in rows:
        try:
            prompt, good, bad = _pair(row, fmt)
        except ValueError as err:
            raise DataError(f"{path}, line {number}: {err}") from None
        prompts.append(prompt)
        chosen.append(good)
        rejected.append(bad)
    return PairData(name or path.stem, prompts, chosen, rejected, row_groups(rows), [number for number, _ in rows],
                    fmt)


def _unique(data: PairData) -> PairData:
    """``data`` without repeated pairs (ignoring case and spacing); the first kept."""
    return data.subset(first_occurrences([(prompt_key(p), normalized(c), normalized(r))
                                          for p, c, r in zip(data.prompts, data.chosen, data.rejected)]))


def split_pairs(data: PairData, *, train_size: int | None = None, val_size: int | None = None,
                test_size: int | None = None, seed: int = 0, keep_val: bool = True,
                keep_test: bool = True) -> tuple[PairData, PairData, PairData]:
    """Deduplicate, then split into train / validation / test by groups, seeded: ``split_chats`` for pairs.

    Repeated pairs are dropped first (ignoring case and spacing). Pairs sharing a ``group``,
    a prompt or a chosen answer stay in one split, so a prompt, or an answer preferred in
    training, is never tested on; a chosen answer shared by more than 1% of the pairs and more
    than two (``ftlib.data.chats.COMMON_ANSWER_SHARE``) ties nothing. Sizes, seed and
    ``keep_val``/``keep_test`` mean what they mean for :func:`ftlib.data.chats.split_chats`
    (by default 10% of the distinct pairs validate and 20% test), with the same guarantees:
    same data and seed, same splits, and the test split depends on ``test_size`` alone.

    Returns
    -------
    tuple of PairData
        ``(train, val, test)``, each in the data's order.

    Examples
    --------
    >>> data = PairData("toy", [[{"role": "user", "content": f"q{i}"}] for i in range(10)],
    ...                 [f"good {i}" for i in range(10)], [f"bad {i}" for i in range(10)])
    >>> [len(s) for s in split_pairs(data, seed=0)]
    [7, 1, 2]
    """
    data = _unique(data)
    unit_of = group_units([prompt_key(p) for p in data.prompts], [normalized(c) for c in data.chosen], data.groups)
    train, val, test = split_indices(unit_of, name=data.name, noun="pairs", train_size=train_size,
                                     val_size=val_size, test_size=test_size, seed=seed, keep_val=keep_val,
                                     keep_test=keep_test)
    return data.subset(train), data.subset(val), data.subset(test)


def looks_like_pairs(path) -> bool:
    """Whether ``path`` is a file for :func:`load_pairs`: its first row (the header; the first
    JSON object that parses) has a ``chosen`` or a ``rejected`` column.

    One of the two is enough, so that a file that lacks the other is told what is missing
    rather than read as something else.
    """
    return bool(PAIR_MARKERS & first_columns(path))


def _words(text: str) -> int:
    return len(text.split())


def inspect_pairs(path) -> dict:
    """What :func:`load_pairs` gives for ``path``, as data.

    Returns ``task`` ("text generation"), ``type`` ("preference"), ``format`` ("standard" or
    "conversational"), ``examples`` (pairs), ``duplicates``, ``words`` (mean words per pair in
    the ``prompt``, every message of it, the ``chosen`` and the ``rejected`` answer),
    ``chosen_longer`` (the share of pairs whose chosen answer has more words than the rejected
    one: near 1, DPO may learn that longer is better), ``first`` (its ``line``, its ``prompt``
    as ``(role, shortened content)``, its shortened ``chosen`` and ``rejected``), ``splits``
    (the sizes :func:`split_pairs` gives by default), ``groups`` where the file has them, and
    ``warnings``.
    """
    data = load_pairs(path)
    longer = float(np.mean([_words(c) > _words(r) for c, r in zip(data.chosen, data.rejected)]))
    report = {"task": data.task, "type": "preference", "format": data.format, "examples": len(data),
              "duplicates": len(data) - len(_unique(data)),
              "words": {"prompt": float(np.mean([sum(_words(m["content"]) for m in p) for p in data.prompts])),
                        "chosen": float(np.mean([_words(c) for c in data.chosen])),
                        "rejected": float(np.mean([_words(r) for r in data.rejected]))},
              "chosen_longer": longer,
              "first": {"line": data.lines[0], "prompt": [(m["role"], shorten(m["content"])) for m in data.prompts[0]],
                        "chosen": shorten(data.chosen[0]), "rejected": shorten(data.rejected[0])},
              "warnings": []}
    if data.groups is not None:
        report["groups"] = len(set(data.groups.tolist()))
    if len(data) >= 10 and not 1 - LENGTH_BIAS_SHARE <= longer <= LENGTH_BIAS_SHARE:
        which = "longer" if longer > LENGTH_BIAS_SHARE else "shorter"
        report["warnings"].append(f"the chosen answer is the longer one in {longer:.0%} of the pairs: DPO may learn "
                                  f"that {which} is better rather than what makes an answer better; balance the "
                                  "lengths, or compare the answers' lengths before and after tuning")
    try:
        train, val, test = split_pairs(data)
        report["splits"] = {"train": len(train), "validation": len(val), "test": len(test)}
    except ValueError as err:  # too few to split: worth knowing before a run
        report["warnings"].append(str(err))
    return report
