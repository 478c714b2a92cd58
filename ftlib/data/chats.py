"""Step 2 for a generative model: instruction data as conversations, checked, and split clean.

``load_chats(path)`` reads the three formats the ecosystem uses, told apart by their columns:

* **prompt-completion** (TRL): ``prompt`` and ``completion``, in JSON Lines or CSV/TSV;
  in JSON Lines both may also be lists of messages (TRL's conversational form);
* **messages** (TRL, OpenAI's fine-tuning API): ``messages``, a list of ``{"role",
  "content"}``, one or many turns, a system turn first if any; JSON Lines only;
* **instruction** (Alpaca): ``instruction``, an optional ``input`` and ``output``; the
  user turn is the instruction, then a blank line and the input when there is one.

Every example becomes one conversation (:func:`check_messages` says what a conversation
is), in a :class:`ChatData`. An optional ``group`` column keeps related examples in one
split. Blank lines are skipped wherever they are; everything else that is wrong (broken
JSON, an empty answer, turns out of order, a file that mixes formats...) raises
:class:`DataError`: one line naming the file and the line (in a CSV, the row's first line,
the header being line 1). The user's files are only read.

``split_chats`` removes duplicates and splits by groups so that no prompt and no answer
sits in two splits; ``load_bbc_headlines`` is the registered ``bbc-headlines``.
Like the rest of the step this module imports no torch (tokenizing is
``ftlib.generative.chat``'s job), so ``ftlib datasets --inspect`` stays fast.

Preference pairs (``prompt``, ``chosen``, ``rejected``) are not a chat format: they are
``ftlib/data/pairs.py``'s, which reads, checks and splits them with the helpers below
(:func:`read_text`, :func:`json_rows`, :func:`csv_rows`, :func:`group_units`,
:func:`split_indices`...), so both kinds of file follow the same rules.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ftlib import arguments
from ftlib.data.registry import ChatData, DataError, load_dataset

__all__ = ["ROLES", "CHAT_FORMATS", "ChatData", "check_messages", "chat_format", "load_chats", "split_chats",
           "load_bbc_headlines", "looks_like_chats", "inspect_chats", "VAL_FRACTION", "TEST_FRACTION",
           "COMMON_ANSWER_SHARE", "PAIR_MARKERS", "CHAT_SUFFIXES", "GROUP_COLUMN", "read_text", "json_rows",
           "csv_rows", "text_field", "row_groups", "normalized", "prompt_key", "group_units", "split_indices",
           "first_occurrences", "first_columns", "shorten"]

ROLES = ("system", "user", "assistant")
# Each format's required columns (an instruction's "input" is optional).
CHAT_FORMATS = {"prompt-completion": ("prompt", "completion"), "messages": ("messages",),
                "instruction": ("instruction", "output")}
_FORMATS_TEXT = ("prompt-completion (prompt, completion), messages (messages: a list of {\"role\", \"content\"}) "
                 "or instruction (instruction, optional input, output)")
_MARKERS = {column for columns in CHAT_FORMATS.values() for column in columns}
# Columns that make a file preference pairs (ftlib/data/pairs.py), whatever else it holds.
PAIR_MARKERS = {"chosen", "rejected"}
CHAT_SUFFIXES = {".jsonl": None, ".ndjson": None, ".json": None, ".csv": ",", ".tsv": "\t"}
GROUP_COLUMN = "group"
_EMPTY = {"prompt": "nothing to answer", "instruction": "nothing to answer", "completion": "no answer to learn from",
          "output": "no answer to learn from", "chosen": "no answer to prefer",
          "rejected": "no answer to prefer the chosen one to"}

# split_chats without sizes: these shares of the distinct conversations.
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2
# An answer shared by more of the examples than this (and by more than two) is a label, like
# "positive", not a leak: it does not tie its examples into one group.
COMMON_ANSWER_SHARE = 0.01


def check_messages(messages: Any, *, ends_on: str = "assistant") -> list[dict]:
    """``messages`` as a list of ``{"role", "content"}`` dicts, or ``ValueError`` saying what is wrong.

    The rules: a non-empty list of dicts, each with a known ``role`` (`ROLES`) and a string
    ``content``; a system turn only first; then user and assistant in turn, starting with
    the user and ending with a non-empty assistant reply. Other keys are dropped.
    ``ends_on="user"`` checks a prompt instead (preference pairs' ``prompt``): it ends on a
    non-empty user turn, the one the answers reply to.
    """
    arguments.one_of(ends_on, "ends_on", ("assistant", "user"))
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"A conversation is a non-empty list of messages, got {type(messages).__name__}.")
    out = []
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"Message {i} is not a {{\"role\", \"content\"}} object: {str(m)[:80]!r}.")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ValueError(f"Message {i} has the unknown role {str(role)[:40]!r}; roles: {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise ValueError(f"Message {i} ({role}) has content of type {type(content).__name__}, not text.")
        out.append({"role": role, "content": content})
    turns = out[1:] if out[0]["role"] == "system" else out
    for i, m in enumerate(turns):
        number = i + 1 + (len(out) - len(turns))
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] == "system":
            raise ValueError(f"Message {number} is a system turn; only the first message may be one.")
        if m["role"] != expected:
            raise ValueError(f"Message {number} is from the {m['role']} where the {expected} speaks: the turns "
                             "must alternate, user first.")
        if expected == "assistant" and not m["content"].strip():
            raise ValueError(f"Message {number} is an empty assistant reply: nothing to learn from it.")
    if ends_on == "user":
        if not turns:
            raise ValueError("The prompt has only a system turn: it must end on the user turn that the answers "
                             "reply to.")
        if turns[-1]["role"] != "user":
            raise ValueError(f"The prompt ends on the assistant (message {len(out)}): it must end on the user turn "
                             "that the answers reply to.")
        if not turns[-1]["content"].strip():
            raise ValueError(f"Message {len(out)} is an empty user turn: nothing to answer.")
    elif not turns or turns[-1]["role"] != "assistant":
        raise ValueError("The conversation ends on the user: it needs an assistant reply to learn from.")
    return out


def chat_format(columns) -> str:
    """The format (a key of :data:`CHAT_FORMATS`) that ``columns`` are written in, or :class:`DataError`.

    Other columns are allowed and ignored (a ``group`` column is used by :func:`load_chats`).

    Examples
    --------
    >>> chat_format(["instruction", "input", "output"])
    'instruction'
    """
    columns = list(columns)
    shown = ", ".join(map(str, columns)) or "none"
    if PAIR_MARKERS & set(columns):
        raise DataError(f"Columns {shown} are preference pairs (prompt, chosen, rejected: TRL's preference format), "
                        "for preference tuning, not a chat format: read them with ftlib.data.load_pairs.")
    found = [fmt for fmt, required in CHAT_FORMATS.items() if set(required) & set(columns)]
    if not found:
        raise DataError(f"Columns {shown} match no chat format; use one of: {_FORMATS_TEXT}.")
    if len(found) > 1:
        raise DataError(f"Columns {shown} mix the {found[0]} and {found[1]} formats; use one of: {_FORMATS_TEXT}.")
    missing = [c for c in CHAT_FORMATS[found[0]] if c not in columns]
    if missing:
        raise DataError(f"The {found[0]} format needs the column {missing[0]!r} too; found: {shown}.")
    return found[0]


def read_text(path: Path) -> str:
    """The text of a data file for :func:`load_chats` (or ``load_pairs``), or :class:`DataError`:
    missing, an unknown extension, not UTF-8, unreadable, or empty."""
    if not path.is_file():
        raise DataError(f"No such file: {path}.")
    if path.suffix.lower() not in CHAT_SUFFIXES:
        raise DataError(f"{path}: expected a .jsonl or .json file (one JSON object per line) or a .csv or .tsv "
                        f"file with a header; got {path.suffix or 'no extension'}.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet).") from None
    except OSError as err:
        raise DataError(f"Cannot read {path}: {err.strerror}.") from None
    if not text.strip():
        raise DataError(f"{path} is empty.")
    return text


def _is_array(text: str) -> bool:
    try:
        return isinstance(json.loads(text), list)
    except json.JSONDecodeError:
        return False


def json_rows(path: Path, text: str, format_of: Callable[[dict], str] = chat_format,
              describe: Callable[[dict], str] = lambda row: ", ".join(row)) -> tuple[str, list[tuple[int, dict]]]:
    """The file's format and its ``(line, object)`` rows, or :class:`DataError` naming the line.

    ``format_of(row)`` gives a row's format or raises ``ValueError`` (:func:`chat_format` checks
    its columns); every row must be in the first row's format, and ``describe(row)`` says in
    the error what the row that switches looks like (by default its columns).
    """
    if text.lstrip().startswith("[") and _is_array(text):
        raise DataError(f"{path} is one JSON array; ftlib reads JSON Lines, one object per line: convert it with "
                        f"jq -c '.[]' {path.name} > {path.stem}.jsonl")
    rows, fmt, first = [], None, 0
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno}); JSON Lines "
                            "has one object per line.") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}.")
        try:
            row_fmt = format_of(row)
        except ValueError as err:
            raise DataError(f"{path}, line {number}: {err}") from None
        if fmt is None:
            fmt, first = row_fmt, number
        elif row_fmt != fmt:
            raise DataError(f"{path}, line {number}: the format switches to {row_fmt} ({describe(row)}) where "
                            f"the file began as {fmt} (line {first}); one file holds one format.")
        rows.append((number, row))
    return fmt, rows


def _csv_chat_format(header: list[str]) -> str:
    fmt = chat_format(header)
    if fmt == "messages":
        raise DataError("the messages format needs JSON Lines (a list of messages per line); in a CSV use "
                        "prompt,completion or instruction,input,output.")
    return fmt


def csv_rows(path: Path, text: str, format_of: Callable[[list[str]], str] = _csv_chat_format
             ) -> tuple[str, list[tuple[int, dict]]]:
    """The format of a CSV/TSV file (``format_of(header)``, which raises ``ValueError`` for a
    header it cannot read) and its ``(line, row)`` rows, or :class:`DataError` naming the line.

    A row's line is its first one (a quoted cell may span lines), the header being line 1.
    """
    reader = csv.reader(io.StringIO(text), delimiter=CHAT_SUFFIXES[path.suffix.lower()])
    header, rows, start = None, [], 1
    try:
        for cells in reader:
            number, start = start, reader.line_num + 1  # a quoted cell may span lines: the row's first one
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                try:
                    fmt = format_of(header)
                except ValueError as err:
                    raise DataError(f"{path}, line {number}: {err}") from None
                continue
            if len(cells) > len(header):
                raise DataError(f"{path}, line {number}: {len(cells)} fields where the header has {len(header)}; "
                                "quote texts that hold the separator.")
            rows.append((number, dict(zip(header, cells))))
    except csv.Error as err:
        raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({err}).") from None
    if not rows:
        raise DataError(f"{path} has a header but no rows.")
    return fmt, rows


def text_field(row: dict, column: str, *, required: bool = True) -> str:
    """``row[column]`` stripped, or ``ValueError``: not text, or empty where ``required``."""
    value = row.get(column)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{column!r} is a JSON {type(value).__name__}, not text.")
    value = (value or "").strip()
    if required and not value:
        raise ValueError(f"empty {column!r}: {_EMPTY[column]}.")
    return value


def _conversation(row: dict, fmt: str) -> list[dict]:
    """The example of a row in ``fmt`` as a checked conversation, or ``ValueError``."""
    if fmt == "messages":
        return check_messages(row["messages"])
    if fmt == "instruction":
        instruction, extra = text_field(row, "instruction"), text_field(row, "input", required=False)
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return [{"role": "user", "content": user}, {"role": "assistant", "content": text_field(row, "output")}]
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, list) or isinstance(completion, list):
        if not (isinstance(prompt, list) and isinstance(completion, list)):
            raise ValueError("'prompt' and 'completion' must both be text, or both lists of messages.")
        return check_messages(prompt + completion)
    return [{"role": "user", "content": text_field(row, "prompt")},
            {"role": "assistant", "content": text_field(row, "completion")}]


def load_chats(path, *, name: str | None = None) -> ChatData:
    """The conversations of an instruction file, in any of the three formats.

    Parameters
    ----------
    path : str or Path
        A JSON Lines file (``.jsonl``, ``.json``: one object per line) or a CSV/TSV file with
        a header (prompt-completion and instruction only). The format is detected from the
        columns (:func:`chat_format`); every line must be in the first line's format.
    name : str, optional
        The data set's name (default: the file's name without its extension).

    Returns
    -------
    ChatData
        One conversation per example, with ``lines`` (each example's line in the file) and
        ``groups`` where the file has a ``group`` column (rows without one are their own group).

    Raises
    ------
    DataError
        One line saying what is wrong and where (file and line).
    """
    path = Path(path)
    text = read_text(path)
    fmt, rows = (csv_rows if CHAT_SUFFIXES[path.suffix.lower()] else json_rows)(path, text)
    conversations = []
    for number, row in rows:
        try:
            conversations.append(_conversation(row, fmt))
        except ValueError as err:
            raise DataError(f"{path}, line {number}: {err}") from None
    return ChatData(name or path.stem, conversations, fmt, row_groups(rows), [number for number, _ in rows])


def row_groups(rows: list[tuple[int, dict]]) -> np.ndarray | None:
    """The ``group`` of each ``(line, row)``, or ``None`` where no row has one."""
    given = ["" if row.get(GROUP_COLUMN) is None else str(row[GROUP_COLUMN]).strip() for _, row in rows]
    # A row without a group is a group of its own, not one big group of all such rows.
    return np.array([g or f"\0line {number}" for g, (number, _) in zip(given, rows)]) if any(given) else None


def load_bbc_headlines() -> ChatData:
    """The registered ``bbc-headlines``: a headline to write for each BBC News article.

    The user turn is ``ftlib.data.registry.HEADLINE_INSTRUCTION``, a blank line, then
    ``"Article: "`` and the article's first ``HEADLINE_ARTICLE_WORDS`` words; the answer is
    the article's real headline. ``topics`` holds each article's topic (business, sports...).
    All 2,225 articles, duplicates included: :func:`split_chats` removes and groups them.
    """
    return load_dataset("bbc-headlines")


def normalized(text: str) -> str:
    """``text`` in lower case with its spacing collapsed: the key under which texts are the same."""
    return " ".join(text.lower().split())


def prompt_key(messages: list[dict]) -> str:
    """``messages`` (a prompt: everything before the reply) as one key, ignoring case and spacing."""
    return "\n".join(f"{m['role']}: {normalized(m['content'])}" for m in messages)


def first_occurrences(keys: list) -> np.ndarray:
    """The index of each key's first occurrence, in order: the examples kept by deduplication."""
    seen: set = set()
    keep = []
    for i, key in enumerate(keys):
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def _unique(data: ChatData) -> ChatData:
    """``data`` without repeated conversations (ignoring case and spacing); the first kept."""
    return data.subset(first_occurrences([(prompt_key(c[:-1]), normalized(c[-1]["content"]))
                                          for c in data.conversations]))


def group_units(prompts: list[str], answers: list[str], groups: np.ndarray | None = None) -> np.ndarray:
    """Each example's unit (0, 1...): examples sharing a group, a prompt or an answer share a unit.

    ``prompts`` and ``answers`` are keys (:func:`prompt_key`, :func:`normalized`). An answer
    shared by more than :data:`COMMON_ANSWER_SHARE` of the examples (and by more than two) is
    a label, and ties nothing.
    """
    n = len(prompts)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    counts = Counter(answers)
    common = max(2, COMMON_ANSWER_SHARE * n)
    first: dict[tuple, int] = {}
    for i in range(n):
        keys = [("prompt", prompts[i])]
        if counts[answers[i]] <= common:
            keys.append(("answer", answers[i]))
        if groups is not None:
            keys.append(("group", groups[i]))
        for key in keys:
            parent[root(i)] = root(first.setdefault(key, i))
    return np.unique([root(i) for i in range(n)], return_inverse=True)[1]


def split_indices(unit_of: np.ndarray, *, name: str, noun: str, train_size: int | None = None,
                  val_size: int | None = None, test_size: int | None = None, seed: int = 0, keep_val: bool = True,
                  keep_test: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sorted indices of ``(train, val, test)``, dealing out whole units (:func:`group_units`).

    The rules of :func:`split_chats` (its parameters), on deduplicated examples whose units are
    ``unit_of``; ``name`` and ``noun`` ("conversations", "pairs") are for the error messages.
    """
    for what, size in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
        if size is not None:
            arguments.integer(size, what)
    n = len(unit_of)

    def target(size, fraction, keep):
        return 0 if not keep else size if size is not None else max(1, round(n * fraction))

    room = [0, target(val_size, VAL_FRACTION, keep_val), target(test_size, TEST_FRACTION, keep_test)]
    if room[1] + room[2] >= n:
        raise ValueError(f"{name} has {n} distinct {noun}: too few for a validation split of {room[1]} "
                         f"and a test split of {room[2]} with {noun} left to train on.")
    sizes = np.bincount(unit_of)
    rng = np.random.default_rng(seed)
    split_of_unit = np.zeros(len(sizes), dtype=np.int64)  # 0 train, 1 val, 2 test
    for unit in rng.permutation(len(sizes)):
        for k in (2, 1):
            if sizes[unit] <= room[k]:
                split_of_unit[unit] = k
                room[k] -= sizes[unit]
                break
    split = split_of_unit[unit_of]
    for k, what, keep in ((2, "test", keep_test), (1, "validation", keep_val)):
        if keep and not (split == k).any():
            raise ValueError(f"Cannot make a {what} split of {name}: its {n} {noun} form {len(sizes)} "
                             f"groups (a shared group, prompt or answer), none small enough; ask for a larger one.")
    train = np.flatnonzero(split == 0)
    if train_size is not None:
        if train_size > len(train):
            raise ValueError(f"train_size={train_size} is larger than the {len(train)} {noun} left to train "
                             f"on; use at most {len(train)}.")
        train = np.sort(rng.permutation(train)[:train_size])
    return train, np.flatnonzero(split == 1), np.flatnonzero(split == 2)


def split_chats(data: ChatData, *, train_size: int | None = None, val_size: int | None = None,
                test_size: int | None = None, seed: int = 0, keep_val: bool = True,
                keep_test: bool = True) -> tuple[ChatData, ChatData, ChatData]:
    """Deduplicate, then split into train / validation / test by groups, seeded.

    Repeated conversations are dropped first (ignoring case and spacing). Examples sharing a
    ``group``, a prompt (everything before the last reply) or an answer (the last reply)
    stay in one split, so a prompt or an answer seen in training is never tested on; an
    answer shared by more than 1% of the examples and more than two (:data:`COMMON_ANSWER_SHARE`)
    is a label such as "positive" and ties nothing. The groups are shuffled with ``seed`` and dealt
    out: test first, then validation, each as near its size as whole groups allow (never
    more), the rest trains. Same data and seed, same splits; the test split depends only
    on ``test_size``, not on the other sizes.

    Parameters
    ----------
    data : ChatData
        From :func:`load_chats` or a registered data set.
    train_size, val_size, test_size : int, optional
        How many conversations each split gets. ``None``: validation and test take
        :data:`VAL_FRACTION` (10%) and :data:`TEST_FRACTION` (20%) of the distinct
        conversations, training all the rest.
    seed : int
        The shuffle's seed.
    keep_val, keep_test : bool
        ``False`` when that split comes from elsewhere (a file of its own): it is returned
        empty and its share trains.

    Returns
    -------
    tuple of ChatData
        ``(train, val, test)``, each in the data's order.

    Examples
    --------
    >>> data = ChatData("toy", [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    ...                         for i in range(10)], "prompt-completion")
    >>> [len(s) for s in split_chats(data, seed=0)]
    [7, 1, 2]
    """
    data = _unique(data)
    unit_of = group_units([prompt_key(c[:-1]) for c in data.conversations],
                          [normalized(c[-1]["content"]) for c in data.conversations], data.groups)
    train, val, test = split_indices(unit_of, name=data.name, noun="conversations", train_size=train_size,
                                     val_size=val_size, test_size=test_size, seed=seed, keep_val=keep_val,
                                     keep_test=keep_test)
    return data.subset(train), data.subset(val), data.subset(test)


def first_columns(path) -> set[str]:
    """The columns of a data file's first row: a CSV/TSV's header, or the keys of the first line
    of a JSON Lines file that parses; empty where there is none or the file cannot be read (the
    loader that runs next says why)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in CHAT_SUFFIXES:
        return set()
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if CHAT_SUFFIXES[suffix] is not None:
                header = next((row for row in csv.reader(f, delimiter=CHAT_SUFFIXES[suffix]) if row), [])
                return {c.strip() for c in header}
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # blank or broken: the loader says where
                    continue
                return set(row) if isinstance(row, dict) else set()
    except (UnicodeDecodeError, OSError, csv.Error):
        return set()
    return set()


def looks_like_chats(path) -> bool:
    """Whether ``path`` is a file for :func:`load_chats` rather than a table of texts and labels.

    True for a ``.json`` file, and for a JSON Lines or CSV/TSV file whose first row (the
    header; the first object that parses) has a column of a chat format; false for
    preference pairs (a ``chosen`` or ``rejected`` column: ``ftlib.data.pairs.looks_like_pairs``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in CHAT_SUFFIXES:
        return False
    columns = first_columns(path)
    if PAIR_MARKERS & columns:
        return False
    return suffix == ".json" or bool(_MARKERS & columns)


def shorten(text: str, width: int = 70) -> str:
    """``text`` on one line, cut to ``width`` characters with "..." where longer."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def inspect_chats(path) -> dict:
    """What :func:`load_chats` gives for ``path``, as data.

    Returns ``task`` ("text generation"), ``format``, ``examples``, ``duplicates``,
    ``turns`` (messages per conversation, system turn included: ``min``, ``mean``,
    ``max``), ``words`` (mean words per example in the ``prompt``: every turn but the
    assistant's, and in the ``answer``: the assistant's), ``first`` (its ``line`` and its
    ``messages`` as ``(role, shortened content)``), ``splits`` (the sizes
    :func:`split_chats` gives by default), ``groups`` where the file has them, and
    ``warnings``.
    """
    data = load_chats(path)
    turns = [len(c) for c in data.conversations]
    words = {side: float(np.mean([sum(len(m["content"].split()) for m in c if (m["role"] == "assistant") == answer)
                                  for c in data.conversations]))
             for side, answer in (("prompt", False), ("answer", True))}
    report = {"task": data.task, "format": data.format, "examples": len(data),
              "duplicates": len(data) - len(_unique(data)),
              "turns": {"min": min(turns), "mean": float(np.mean(turns)), "max": max(turns)}, "words": words,
              "first": {"line": data.lines[0],
                        "messages": [(m["role"], shorten(m["content"])) for m in data.conversations[0]]},
              "warnings": []}
    if data.groups is not None:
        report["groups"] = len(set(data.groups.tolist()))
    try:
        train, val, test = split_chats(data)
        report["splits"] = {"train": len(train), "validation": len(val), "test": len(test)}
    except ValueError as err:  # too few to split: worth knowing before a run
        report["warnings"].append(str(err))
    return report
