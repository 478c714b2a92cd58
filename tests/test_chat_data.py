"""ftlib.data.chats: instruction data in three formats as conversations, bad input, clean splits, bbc-headlines."""
import hashlib
import json
import subprocess
import sys

import pytest

from ftlib.arguments import ArgumentError
from ftlib.cli import main
from ftlib.data import DATASETS, ChatData, DataError, chat_format, check_messages, inspect_data, load_chats, split_chats
from ftlib.data.chats import TEST_FRACTION, VAL_FRACTION, load_bbc_headlines
from ftlib.data.registry import HEADLINE_ARTICLE_WORDS, HEADLINE_INSTRUCTION


def _jsonl(path, rows, *, blank_after=()):
    lines = []
    for i, row in enumerate(rows):
        lines.append(json.dumps(row))
        if i in blank_after:
            lines.append("   ")
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")  # blank lines at the end too
    return path


def _state(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def _pair(user, assistant, system=None):
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _toy(n, *, answers=None, name="toy"):
    answers = answers or [f"answer number {i}" for i in range(n)]
    return ChatData(name, [_pair(f"question number {i}", answers[i]) for i in range(n)], "prompt-completion")


# --- the three formats -------------------------------------------------------------------------

def test_prompt_completion_from_jsonl_and_csv_give_the_same_conversations(tmp_path):
    rows = [{"prompt": "What is 2+2?", "completion": "4"}, {"prompt": "Capital of France?", "completion": " Paris "}]
    from_jsonl = load_chats(_jsonl(tmp_path / "qa.jsonl", rows, blank_after={0}))
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text('prompt,completion\n"What is 2+2?",4\n\n"Capital of France?", Paris \n', encoding="utf-8")
    from_csv = load_chats(csv_path)
    expected = [_pair("What is 2+2?", "4"), _pair("Capital of France?", "Paris")]
    for data in (from_jsonl, from_csv):
        assert data.format == "prompt-completion" and data.name == "qa" and len(data) == 2
        assert data.conversations == expected and data.groups is None
    assert from_jsonl.lines == [1, 3] and from_csv.lines == [2, 4]  # blank lines skipped, but counted


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_instruction_format_puts_the_input_after_a_blank_line_only_when_there_is_one(tmp_path, suffix):
    rows = [("Translate to English.", "bonjour", "hello"), ("Name a colour.", "", "Blue"),
            ("Add them.", "2 and 3", "5")]
    path = tmp_path / f"alpaca{suffix}"
    if suffix == ".jsonl":
        records = [{"instruction": i, "input": x, "output": o} for i, x, o in rows]
        del records[1]["input"]  # Alpaca files leave it out as often as they leave it empty
        _jsonl(path, records)
    else:
        sep = "," if suffix == ".csv" else "\t"
        path.write_text(sep.join(["instruction", "input", "output"]) + "\n"
                        + "".join(sep.join(r) + "\n" for r in rows), encoding="utf-8")
    data = load_chats(path)
    assert data.format == "instruction"
    assert [c[0]["content"] for c in data.conversations] == ["Translate to English.\n\nbonjour", "Name a colour.",
                                                              "Add them.\n\n2 and 3"]
    assert [c[1] for c in data.conversations] == [{"role": "assistant", "content": o} for _, _, o in rows]


def test_messages_keep_system_turns_and_many_turns_and_drop_other_keys(tmp_path):
    long = _pair("Hi", "Hello!", system="Be brief.") + _pair("How are you?", "Fine, thanks.")
    rows = [{"messages": long}, {"messages": [{"role": "user", "content": "Bye", "weight": 0},
                                             {"role": "assistant", "content": "Bye!", "weight": 1}]}]
    data = load_chats(_jsonl(tmp_path / "chats.jsonl", rows), name="mine")
    assert data.name == "mine" and data.format == "messages"
    assert data.conversations == [long, _pair("Bye", "Bye!")]
    assert [len(c) for c in data.conversations] == [5, 2]


def test_trl_conversational_prompt_and_completion_lists(tmp_path):
    row = {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
           "completion": [{"role": "assistant", "content": "A"}]}
    data = load_chats(_jsonl(tmp_path / "trl.jsonl", [row]))
    assert data.format == "prompt-completion" and data.conversations == [_pair("Q", "A", system="S")]


def test_a_group_column_keeps_its_rows_together_and_rows_without_one_stand_alone(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", **({"group": i % 5} if i < 50 else {})} for i in range(100)]
    data = load_chats(_jsonl(tmp_path / "grouped.jsonl", rows))
    assert data.groups is not None and data.groups[0] == "0" and data.groups[60] != data.groups[61]
    splits = split_chats(data, seed=3)
    for group in map(str, range(5)):
        assert sum(group in s.groups.tolist() for s in splits) == 1


def test_check_messages_moved_here_is_the_one_the_generative_modules_use():
    from ftlib.generative.chat import ROLES, check_messages as from_generative

    assert from_generative is check_messages and ROLES == ("system", "user", "assistant")


def test_the_chat_data_modules_import_no_torch():
    code = ("import sys\nimport ftlib.data.chats, ftlib.data.files\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers') "
            "or k.startswith('ftlib.generative')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# --- detection and bad input ---------------------------------------------------------------------

@pytest.mark.parametrize("columns, expected", [
    (["prompt", "completion"], "prompt-completion"),
    (["id", "completion", "prompt", "group"], "prompt-completion"),
    (["messages"], "messages"),
    (["instruction", "input", "output"], "instruction"),
    (["instruction", "output", "text"], "instruction"),
])
def test_chat_format_is_detected_from_the_columns(columns, expected):
    assert chat_format(columns) == expected


@pytest.mark.parametrize("columns, message", [
    (["text", "label"], "Columns text, label match no chat format; use one of: prompt-completion (prompt, "
                        "completion), messages (messages: a list of"),
    (["prompt", "output"], "Columns prompt, output mix the prompt-completion and instruction formats"),
    (["instruction", "input"], "The instruction format needs the column 'output' too; found: instruction, input."),
])
def test_chat_format_says_what_is_wrong_with_the_columns(columns, message):
    with pytest.raises(DataError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        chat_format(columns)


PC = '{"prompt": "p", "completion": "c"}\n'
MSG_OK = json.dumps({"messages": _pair("u", "a")}) + "\n"


def _msgs(*turns):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}) + "\n"


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", PC + "\n" + '{"prompt": "p2", "completion": "  "}\n',
     "line 3: empty 'completion': no answer to learn from."),
    ("missing.jsonl", PC + '{"prompt": "p2"}\n',
     "line 2: The prompt-completion format needs the column 'completion' too; found: prompt."),
    ("null.jsonl", PC + PC + '{"prompt": "p3", "completion": null}\n', "line 3: empty 'completion'"),
    ("number.jsonl", '{"prompt": "p", "completion": 4}\n', "line 1: 'completion' is a JSON int, not text."),
    ("output.csv", 'instruction,input,output\n"multi\nline",,B\nC,,\n', "line 4: empty 'output'"),
    ("empty_instruction.csv", "instruction,output\n,B\n", "line 2: empty 'instruction': nothing to answer."),
    ("ends_on_user.jsonl", MSG_OK + _msgs(("user", "u"), ("assistant", "a"), ("user", "more?")),
     "line 2: The conversation ends on the user"),
    ("only_user.jsonl", _msgs(("user", "u")), "line 1: The conversation ends on the user"),
    ("order.jsonl", MSG_OK + "\n\n" + _msgs(("assistant", "a"), ("user", "u")),
     "line 4: Message 1 is from the assistant where the user speaks"),
    ("late_system.jsonl", _msgs(("user", "u"), ("system", "s"), ("assistant", "a")),
     "line 1: Message 2 is a system turn"),
    ("role.jsonl", _msgs(("user", "u"), ("bot", "a")), "line 1: Message 2 has the unknown role 'bot'"),
    ("empty_reply.jsonl", _msgs(("user", "u"), ("assistant", " ")), "line 1: Message 2 is an empty assistant reply"),
    ("broken.jsonl", PC + '{"prompt": "p", "completion": "c"\n', "line 2: not valid JSON"),
    ("list.jsonl", PC + '["p", "c"]\n', "line 2: expected a JSON object, got list."),
    ("mixed.jsonl", PC + PC + '{"instruction": "i", "output": "o"}\n',
     "line 3: the format switches to instruction (instruction, output) where the file began as "
     "prompt-completion (line 1)"),
    ("mixed_row.jsonl", '{"prompt": "p", "output": "o"}\n', "line 1: Columns prompt, output mix the"),
    ("nothing.jsonl", '{"text": "t", "label": "l"}\n', "line 1: Columns text, label match no chat format; use one "
                                                       "of: prompt-completion (prompt, completion), messages"),
    ("nothing.csv", "question,answer\nq,a\n", "line 1: Columns question, answer match no chat format"),
    ("messages.csv", 'messages\n"[]"\n', "line 1: the messages format needs JSON Lines"),
    ("fields.csv", "prompt,completion\np,c,extra\n", "line 2: 3 fields where the header has 2"),
])
def test_bad_input_is_one_line_naming_the_file_and_the_line_and_the_file_is_untouched(tmp_path, name, content,
                                                                                      message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    before = _state(path)
    with pytest.raises(DataError) as info:
        load_chats(path)
    assert str(info.value).startswith(f"{path}, {message}"), str(info.value)
    assert "\n" not in str(info.value)
    assert _state(path) == before


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", "", "{path} is empty."),
    ("blank.jsonl", "\n  \n\n", "{path} is empty."),
    ("header.csv", "prompt,completion\n\n", "{path} has a header but no rows."),
    ("notes.txt", PC, "{path}: expected a .jsonl or .json file"),
    ("alpaca.json", '[\n  {"instruction": "i", "output": "o"}\n]\n', "{path} is one JSON array; ftlib reads JSON "
                                                                     "Lines"),
])
def test_bad_files_as_a_whole_get_one_line_too(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    before = _state(path)
    with pytest.raises(DataError) as info:
        load_chats(path)
    assert str(info.value).startswith(message.format(path=path)) and "\n" not in str(info.value)
    assert _state(path) == before


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="No such file: .*absent.jsonl"):
        load_chats(tmp_path / "absent.jsonl")


# --- splits ------------------------------------------------------------------------------------------

def _keys(split):
    return ({" ".join(c[0]["content"].lower().split()) for c in split.conversations},
            {" ".join(c[-1]["content"].lower().split()) for c in split.conversations})


def test_split_chats_defaults_sizes_determinism_and_disjointness():
    data = _toy(200)
    train, val, test = split_chats(data, seed=0)
    assert (len(train), len(val), len(test)) == (200 - 20 - 40, round(200 * VAL_FRACTION), round(200 * TEST_FRACTION))
    prompts = [_keys(s)[0] for s in (train, val, test)]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert set().union(*prompts) == _keys(data)[0]
    again = split_chats(data, seed=0)
    assert [s.conversations for s in again] == [s.conversations for s in (train, val, test)]
    other = split_chats(data, seed=1)
    assert other[2].conversations != test.conversations
    sized = split_chats(data, train_size=50, val_size=30, test_size=40, seed=0)
    assert [len(s) for s in sized] == [50, 30, 40]
    assert sized[2].conversations == test.conversations  # the test split depends on test_size alone
    bigger = split_chats(data, train_size=100, val_size=30, test_size=40, seed=0)
    assert set(map(str, sized[0].conversations)) < set(map(str, bigger[0].conversations))


def test_split_chats_removes_duplicates_and_never_splits_a_shared_prompt_or_answer():
    conversations = [_pair(f"question {i}", f"answer {i}") for i in range(120)]
    conversations += [_pair("Question 0", "answer   0")]  # a duplicate (case, spacing)
    conversations += [_pair(f"question {i}", f"another answer {i}") for i in range(10)]  # same prompts
    conversations += [_pair(f"another question {i}", f"answer {i + 10}") for i in range(10)]  # same answers
    data = ChatData("shared", conversations, "prompt-completion", lines=list(range(1, len(conversations) + 1)))
    for seed in range(5):
        splits = split_chats(data, seed=seed)
        assert sum(map(len, splits)) == len(conversations) - 1
        assert 121 not in [line for s in splits for line in s.lines]  # the duplicate's line: dropped
        for a in range(3):
            for b in range(a + 1, 3):
                assert not (_keys(splits[a])[0] & _keys(splits[b])[0]), (seed, a, b)
                assert not (_keys(splits[a])[1] & _keys(splits[b])[1]), (seed, a, b)


def test_a_label_like_answer_shared_by_many_does_not_tie_its_examples_together():
    data = _toy(100, answers=["positive" if i % 2 else "negative" for i in range(100)])
    train, val, test = split_chats(data, seed=0)
    assert (len(train), len(val), len(test)) == (70, 10, 20)


def test_split_chats_keep_val_false_trains_on_the_validation_share():
    train, val, test = split_chats(_toy(100), seed=0, keep_val=False)
    assert (len(train), len(val), len(test)) == (80, 0, 20)


@pytest.mark.parametrize("data, options, error, message", [
    (_toy(2), {}, ValueError, "toy has 2 distinct conversations: too few"),
    (_toy(20), {"val_size": 10, "test_size": 10}, ValueError, "too few for a validation split of 10 and a test split"),
    (_toy(20), {"train_size": 30}, ValueError, r"train_size=30 is larger than the 14 conversations left"),
    (_toy(20), {"test_size": 0}, ArgumentError, r"test_size must be a positive integer; got 0\."),
    (_toy(20), {"val_size": True}, ArgumentError, r"val_size must be a positive integer; got True\."),
    (ChatData("one", [_pair("same prompt", f"a{i}") for i in range(20)], "messages"), {}, ValueError,
     "Cannot make a test split of one: its 20 conversations form 1 groups"),
])
def test_split_chats_says_what_is_wrong(data, options, error, message):
    with pytest.raises(error, match=message):
        split_chats(data, **options)


# --- bbc-headlines -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def headlines():
    return load_bbc_headlines()


def test_bbc_headlines_is_registered_and_is_each_articles_real_headline(headlines):
    from ftlib.data import load_dataset

    spec = DATASETS["bbc-headlines"]
    assert spec.task == "text generation" and spec.licence == DATASETS["bbc-news"].licence
    news = load_dataset("bbc-news")
    assert len(headlines) == len(news) == 2225 and f"{len(headlines):,} articles" in spec.size
    assert headlines.format == "prompt-completion" and headlines.name == "bbc-headlines"
    assert headlines.conversations[0][-1] == {"role": "assistant", "content": "Ad sales boost Time Warner profit"}
    for i in (0, 700, 2224):
        assert headlines.conversations[i][-1]["content"] == news.inputs[i].split("\n")[0].strip()
        assert headlines.topics[i] == news.class_names[news.labels[i]]
    assert all(c[-1]["content"].strip() and "\n" not in c[-1]["content"] for c in headlines.conversations)
    for c in headlines.conversations:
        assert [m["role"] for m in c] == ["user", "assistant"]
        instruction, article = c[0]["content"].split("\n\nArticle: ")
        assert instruction == HEADLINE_INSTRUCTION and 0 < len(article.split()) <= HEADLINE_ARTICLE_WORDS
    assert sum(len(c[0]["content"].split("Article: ")[1].split()) == HEADLINE_ARTICLE_WORDS
               for c in headlines.conversations) > 2000  # nearly every article is longer than the cut


def test_bbc_headlines_splits_share_no_article_and_no_headline(headlines):
    from ftlib.config import DATA_BUDGETS

    splits = split_chats(headlines, seed=0)
    distinct = sum(map(len, splits))
    assert distinct < len(headlines) and f"({distinct:,} distinct)" in DATASETS["bbc-headlines"].size
    keys = [_keys(s) for s in splits]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not (keys[a][0] & keys[b][0]) and not (keys[a][1] & keys[b][1])
    pairs = [(c[0]["content"], c[1]["content"]) for s in splits for c in s.conversations]
    assert len(pairs) == len(set(pairs))
    train, val, test = split_chats(headlines, **dict(zip(("train_size", "val_size", "test_size"),
                                                          DATA_BUDGETS["bbc-headlines"]["sizes"])), seed=0)
    assert [len(train), len(val), len(test)] == list(DATA_BUDGETS["bbc-headlines"]["sizes"])


# --- inspecting, on the command line ----------------------------------------------------------------

def _alpaca(tmp_path):
    rows = [{"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
            {"instruction": "Translate to English.", "input": "bonjour", "output": "hello"},
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Name a colour.", "output": "Blue"}]
    return _jsonl(tmp_path / "alpaca.jsonl", rows)


def test_inspect_data_describes_instruction_data(tmp_path):
    report = inspect_data(_alpaca(tmp_path))
    assert report["task"] == "text generation" and report["format"] == "instruction" and report["examples"] == 4
    assert report["turns"] == {"min": 2, "mean": 2.0, "max": 2}
    assert report["words"] == {"prompt": (6 + 4 + 6 + 3) / 4, "answer": (4 + 1 + 1 + 1) / 4}
    assert report["first"] == {"line": 1, "messages": [("user", "Give three tips for staying healthy."),
                                                       ("assistant", "Eat well, sleep, move.")]}
    assert sum(report["splits"].values()) == 4


def test_ftlib_datasets_inspect_shows_the_format_and_the_first_example(tmp_path, capsys):
    path = _alpaca(tmp_path)
    assert main(["datasets", "--inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: text generation, instruction format, 4 examples" in out
    assert "messages per conversation: min 2, mean 2.0, max 2" in out
    assert "  user: Give three tips for staying healthy.\n  assistant: Eat well, sleep, move." in out
    pc = _jsonl(tmp_path / "pc.jsonl", [{"prompt": "p" * 200, "completion": "c"}] * 2)
    assert main(["datasets", "--inspect", str(pc)]) == 0
    out = capsys.readouterr().out
    assert "prompt-completion format, 2 examples, 1 duplicates" in out and "  user: " + "p" * 67 + "..." in out


def test_ftlib_datasets_inspect_on_a_bad_file_prints_one_line_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,completion\nhello,world\nno answer,\n", encoding="utf-8")
    before = _state(path)
    assert main(["datasets", "--inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"ftlib datasets: error: {path}, line 3: empty 'completion': no answer to learn from.\n"
    assert _state(path) == before


def test_ftlib_datasets_lists_bbc_headlines(capsys):
    assert main(["datasets"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("bbc-headlines "))
    assert "text generation" in row and "2,225 articles" in row and row.rstrip().endswith("yes")
