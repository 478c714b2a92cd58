"""ftlib.data.pairs: preference pairs in TRL's two formats, bad input, clean splits, inspecting them."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from ftlib.arguments import ArgumentError
from ftlib.cli import main
from ftlib.data import (DataError, PairData, chat_format, check_messages, inspect_data, load_chats, load_pairs,
                        looks_like_pairs, split_pairs)
from ftlib.data.chats import TEST_FRACTION, VAL_FRACTION, looks_like_chats


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


def _user(text):
    return [{"role": "user", "content": text}]


def _reply(text):
    return [{"role": "assistant", "content": text}]


def _toy(n, *, chosen=None, groups=None, name="toy"):
    chosen = chosen or [f"good answer {i}" for i in range(n)]
    return PairData(name, [_user(f"question number {i}") for i in range(n)], chosen,
                    [f"bad answer {i}" for i in range(n)], groups=groups)


STANDARD = [{"prompt": "Capital of France?", "chosen": " Paris. ", "rejected": "Lyon, I believe."},
            {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}]


# --- the two formats ---------------------------------------------------------------------------------

def test_standard_pairs_from_jsonl_csv_and_tsv_are_the_same(tmp_path):
    from_jsonl = load_pairs(_jsonl(tmp_path / "prefs.jsonl", STANDARD, blank_after={0}))
    csv_path = tmp_path / "prefs.csv"
    csv_path.write_text('prompt,chosen,rejected\n"Capital of France?", Paris. ,"Lyon, I believe."\n\n'
                        "What is 2+2?,4,5\n", encoding="utf-8")
    tsv_path = tmp_path / "prefs.tsv"
    tsv_path.write_text("prompt\tchosen\trejected\nCapital of France?\tParis.\tLyon, I believe.\n"
                        "What is 2+2?\t4\t5\n", encoding="utf-8")
    for data in (from_jsonl, load_pairs(csv_path), load_pairs(tsv_path)):
        assert data.name == "prefs" and data.format == "standard" and len(data) == 2 and data.groups is None
        assert data.prompts == [_user("Capital of France?"), _user("What is 2+2?")]
        assert data.chosen == ["Paris.", "4"] and data.rejected == ["Lyon, I believe.", "5"]
        assert data.task == "text generation"
    assert from_jsonl.lines == [1, 3] and load_pairs(csv_path).lines == [2, 4]  # blank lines skipped, but counted


def test_conversational_pairs_keep_the_system_turn_and_earlier_turns(tmp_path):
    system = [{"role": "system", "content": "Be brief."}]
    history = _user("Hi") + _reply("Hello! How can I help?") + _user("Capital of France?")
    rows = [{"prompt": system + _user("Capital of France?"), "chosen": _reply("Paris."), "rejected": _reply("Lyon.")},
            {"prompt": history, "chosen": [{"role": "assistant", "content": "Paris.", "weight": 1}],
             "rejected": _reply("I don't know."), "id": 7}]
    data = load_pairs(_jsonl(tmp_path / "chat_prefs.jsonl", rows), name="mine")
    assert data.name == "mine" and data.format == "conversational" and data.lines == [1, 2]
    assert data.prompts == [system + _user("Capital of France?"), history]
    assert data.chosen == ["Paris.", "Paris."] and data.rejected == ["Lyon.", "I don't know."]


def test_a_group_column_keeps_its_pairs_together_and_pairs_without_one_stand_alone(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", **({"group": i % 5} if i < 50 else {})}
            for i in range(100)]
    data = load_pairs(_jsonl(tmp_path / "grouped.jsonl", rows))
    assert data.groups is not None and data.groups[0] == "0" and data.groups[60] != data.groups[61]
    splits = split_pairs(data, seed=3)
    for group in map(str, range(5)):
        assert sum(group in s.groups.tolist() for s in splits) == 1


def test_pair_data_subset_keeps_everything_in_step():
    data = _toy(5, groups=np.array(list("aabbc")))
    data.lines = [2, 3, 5, 8, 13]
    part = data.subset(np.array([3, 0]))
    assert part.prompts == [_user("question number 3"), _user("question number 0")]
    assert part.chosen == ["good answer 3", "good answer 0"] and part.rejected == ["bad answer 3", "bad answer 0"]
    assert part.groups.tolist() == ["b", "a"] and part.lines == [8, 2] and len(part) == 2 and part.name == "toy"


def test_the_pair_module_imports_no_torch_and_nothing_generative():
    code = ("import sys\nimport ftlib.data.pairs, ftlib.data.files\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers') "
            "or k.startswith('ftlib.generative')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# --- telling pairs from chats --------------------------------------------------------------------------

def test_a_preference_file_is_pairs_and_not_chats(tmp_path):
    jsonl = _jsonl(tmp_path / "prefs.jsonl", STANDARD)
    as_json = _jsonl(tmp_path / "prefs.json", STANDARD)
    csv_path = tmp_path / "prefs.csv"
    csv_path.write_text("prompt,chosen,rejected\np,c,r\n", encoding="utf-8")
    half = _jsonl(tmp_path / "half.jsonl", [{"prompt": "p", "chosen": "c"}])  # told what is missing, below
    chats = _jsonl(tmp_path / "chats.jsonl", [{"prompt": "p", "completion": "c"}])
    for path in (jsonl, as_json, csv_path, half):
        assert looks_like_pairs(path) and not looks_like_chats(path), path
    assert looks_like_chats(chats) and not looks_like_pairs(chats)
    assert not looks_like_pairs(tmp_path / "absent.jsonl")


def test_chat_format_and_load_chats_send_preference_pairs_to_load_pairs(tmp_path):
    with pytest.raises(DataError, match=r"^Columns prompt, chosen, rejected are preference pairs .*load_pairs"):
        chat_format(["prompt", "chosen", "rejected"])
    path = _jsonl(tmp_path / "prefs.jsonl", STANDARD)
    with pytest.raises(DataError) as info:
        load_chats(path)
    assert str(info.value).startswith(f"{path}, line 1: Columns prompt, chosen, rejected are preference pairs")


def test_check_messages_checks_a_prompt_that_ends_on_the_user():
    prompt = [{"role": "system", "content": "S"}] + _user("Q")
    assert check_messages(prompt, ends_on="user") == prompt
    with pytest.raises(ValueError, match=r"The prompt ends on the assistant \(message 2\)"):
        check_messages(_user("Q") + _reply("A"), ends_on="user")
    with pytest.raises(ArgumentError, match="ends_on"):
        check_messages(prompt, ends_on="system")


# --- bad input ------------------------------------------------------------------------------------------

PAIR = json.dumps(STANDARD[1]) + "\n"
CONV = json.dumps({"prompt": _user("Q"), "chosen": _reply("good"), "rejected": _reply("bad")}) + "\n"


def _conv(prompt=None, chosen=None, rejected=None):
    return json.dumps({"prompt": _user("Q") if prompt is None else prompt,
                       "chosen": _reply("good") if chosen is None else chosen,
                       "rejected": _reply("bad") if rejected is None else rejected}) + "\n"


@pytest.mark.parametrize("name, content, message", [
    ("missing.jsonl", PAIR + '{"prompt": "p", "chosen": "c"}\n',
     "line 2: missing 'rejected': the preference format needs prompt, chosen and rejected; found: prompt, chosen."),
    ("two_missing.jsonl", '{"prompt": "p", "completion": "c"}\n',
     "line 1: missing 'chosen' and 'rejected': the preference format needs prompt, chosen and rejected"),
    ("implicit.jsonl", PAIR + PAIR + '{"chosen": "c", "rejected": "r"}\n',
     "line 3: missing 'prompt': the preference format needs prompt, chosen and rejected; found: chosen, rejected "
     "(TRL's implicit-prompt form"),
    ("missing.csv", "prompt,chosen\np,c\n", "line 1: missing 'rejected': the preference format needs prompt"),
    ("empty_chosen.jsonl", PAIR + "\n\n" + '{"prompt": "p", "chosen": "  ", "rejected": "r"}\n',
     "line 4: empty 'chosen': no answer to prefer."),
    ("null_rejected.jsonl", PAIR + '{"prompt": "p", "chosen": "c", "rejected": null}\n',
     "line 2: empty 'rejected': no answer to prefer the chosen one to."),
    ("empty_prompt.jsonl", '{"prompt": "", "chosen": "c", "rejected": "r"}\n', "line 1: empty 'prompt': nothing to "
                                                                               "answer."),
    ("empty_rejected.csv", 'prompt,chosen,rejected\n"multi\nline",c,r\np,c,\n', "line 4: empty 'rejected'"),
    ("short_row.csv", "prompt,chosen,rejected\np,c,r\np2,c2\n", "line 3: empty 'rejected'"),
    ("same.jsonl", PAIR + '{"prompt": "p", "chosen": "Paris.", "rejected": "  paris. "}\n',
     "line 2: 'chosen' and 'rejected' are the same answer (ignoring case and spacing): nothing to prefer."),
    ("same.csv", "prompt,chosen,rejected\np,Yes,YES\n", "line 2: 'chosen' and 'rejected' are the same answer"),
    ("number.jsonl", '{"prompt": "p", "chosen": 4, "rejected": "5"}\n',
     "line 1: 'chosen' is a JSON int, not text or a list of messages."),
    ("half_list.jsonl", '{"prompt": [{"role": "user", "content": "Q"}], "chosen": "c", "rejected": "r"}\n',
     "line 1: 'prompt' is a list of messages but 'chosen', 'rejected' are text: all three are texts (standard "
     "format) or all lists of messages (conversational)."),
    ("ends_on_assistant.jsonl", CONV + _conv(prompt=_user("Q") + _reply("A")),
     "line 2: The prompt ends on the assistant (message 2): it must end on the user turn that the answers reply to."),
    ("only_system.jsonl", _conv(prompt=[{"role": "system", "content": "S"}]), "line 1: The prompt has only a "
                                                                               "system turn"),
    ("order.jsonl", CONV + "\n" + _conv(prompt=_reply("A") + _user("Q")),
     "line 3: Message 1 is from the assistant where the user speaks"),
    ("late_system.jsonl", _conv(prompt=_user("Q") + [{"role": "system", "content": "S"}]),
     "line 1: Message 2 is a system turn"),
    ("empty_user.jsonl", _conv(prompt=_user("  ")), "line 1: Message 1 is an empty user turn: nothing to answer."),
    ("empty_list_prompt.jsonl", _conv(prompt=[]), "line 1: empty 'prompt': nothing to answer."),
    ("two_answers.jsonl", CONV + CONV + _conv(chosen=_reply("a") + _reply("b")),
     "line 3: 'chosen' holds 2 messages; in the conversational format it is one assistant message, "
     '[{"role": "assistant", "content": "..."}].'),
    ("user_answer.jsonl", _conv(rejected=_user("bad")),
     "line 1: 'rejected' holds a message from the user; in the conversational format it is one assistant message"),
    ("not_a_message.jsonl", _conv(chosen=["good"]), "line 1: 'chosen' holds 'good', not a {\"role\", \"content\"} "
                                                    "message"),
    ("empty_answer.jsonl", _conv(rejected=_reply(" ")), "line 1: empty 'rejected': no answer to prefer"),
    ("no_answer.jsonl", _conv(chosen=[]), "line 1: empty 'chosen'"),
    ("same_conv.jsonl", _conv(chosen=_reply("Good"), rejected=_reply("good ")), "line 1: 'chosen' and 'rejected' "
                                                                                "are the same answer"),
    ("mixed.jsonl", PAIR + "\n" + PAIR + CONV,
     "line 4: the format switches to conversational ('prompt' is a list of messages) where the file began as "
     "standard (line 1); one file holds one format."),
    ("mixed_back.jsonl", CONV + PAIR, "line 2: the format switches to standard ('prompt' is text) where the file "
                                      "began as conversational (line 1)"),
    ("broken.jsonl", PAIR + '{"prompt": "p", "chosen": "c"\n', "line 2: not valid JSON"),
    ("list.jsonl", PAIR + '["p", "c", "r"]\n', "line 2: expected a JSON object, got list."),
    ("fields.csv", "prompt,chosen,rejected\np,c,r,extra\n", "line 2: 4 fields where the header has 3"),
])
def test_bad_input_is_one_line_naming_the_file_and_the_line_and_the_file_is_untouched(tmp_path, name, content,
                                                                                      message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    before = _state(path)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value).startswith(f"{path}, {message}"), str(info.value)
    assert "\n" not in str(info.value)
    assert _state(path) == before


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", "", "{path} is empty."),
    ("blank.jsonl", "\n  \n\n", "{path} is empty."),
    ("header.csv", "prompt,chosen,rejected\n\n", "{path} has a header but no rows."),
    ("notes.txt", PAIR, "{path}: expected a .jsonl or .json file"),
    ("prefs.json", '[\n  {"prompt": "p", "chosen": "c", "rejected": "r"}\n]\n',
     "{path} is one JSON array; ftlib reads JSON Lines, one object per line: convert it with jq -c '.[]' prefs.json "
     "> prefs.jsonl"),
])
def test_bad_files_as_a_whole_get_one_line_too(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    before = _state(path)
    with pytest.raises(DataError) as info:
        load_pairs(path)
    assert str(info.value).startswith(message.format(path=path)) and "\n" not in str(info.value)
    assert _state(path) == before


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="No such file: .*absent.jsonl"):
        load_pairs(tmp_path / "absent.jsonl")


# --- splits ------------------------------------------------------------------------------------------------

def _keys(split):
    return ({" ".join(p[-1]["content"].lower().split()) for p in split.prompts},
            {" ".join(c.lower().split()) for c in split.chosen})


def test_split_pairs_defaults_sizes_determinism_and_disjointness():
    data = _toy(200)
    train, val, test = split_pairs(data, seed=0)
    assert (len(train), len(val), len(test)) == (200 - 20 - 40, round(200 * VAL_FRACTION), round(200 * TEST_FRACTION))
    prompts = [_keys(s)[0] for s in (train, val, test)]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    assert set().union(*prompts) == _keys(data)[0]
    for s in (train, val, test):  # each pair still whole
        assert all(p[0]["content"].split()[-1] == c.split()[-1] == r.split()[-1]
                   for p, c, r in zip(s.prompts, s.chosen, s.rejected))
    again = split_pairs(data, seed=0)
    assert [s.prompts for s in again] == [s.prompts for s in (train, val, test)]
    assert split_pairs(data, seed=1)[2].prompts != test.prompts
    sized = split_pairs(data, train_size=50, val_size=30, test_size=40, seed=0)
    assert [len(s) for s in sized] == [50, 30, 40]
    assert sized[2].prompts == test.prompts  # the test split depends on test_size alone
    bigger = split_pairs(data, train_size=100, val_size=30, test_size=40, seed=0)
    assert set(map(str, sized[0].prompts)) < set(map(str, bigger[0].prompts))


def test_split_pairs_removes_duplicates_and_never_splits_a_shared_prompt_or_chosen_answer():
    prompts = [_user(f"question {i}") for i in range(120)]
    chosen = [f"good {i}" for i in range(120)]
    rejected = [f"bad {i}" for i in range(120)]
    prompts.append(_user("Question 0")), chosen.append("GOOD  0"), rejected.append("bad 0")  # a duplicate
    prompts.append(_user("question 1")), chosen.append("good 1"), rejected.append("worse 1")  # not one: a new rejected
    for i in range(10):  # the same prompts, other answers; then the same chosen answers, other prompts
        prompts.append(_user(f"question {i + 20}")), chosen.append(f"another good {i}"), rejected.append(f"x {i}")
        prompts.append(_user(f"another question {i}")), chosen.append(f"good {i + 40}"), rejected.append(f"y {i}")
    data = PairData("shared", prompts, chosen, rejected, lines=list(range(1, len(prompts) + 1)))
    for seed in range(5):
        splits = split_pairs(data, seed=seed)
        assert sum(map(len, splits)) == len(prompts) - 1
        kept = [line for s in splits for line in s.lines]
        assert 121 not in kept and 122 in kept  # the duplicate's line dropped, the other rejected answer kept
        for a in range(3):
            for b in range(a + 1, 3):
                assert not (_keys(splits[a])[0] & _keys(splits[b])[0]), (seed, a, b)
                assert not (_keys(splits[a])[1] & _keys(splits[b])[1]), (seed, a, b)


def test_a_common_chosen_answer_does_not_tie_its_pairs_together():
    data = _toy(100, chosen=["I cannot help with that." if i % 2 else "Sure." for i in range(100)])
    assert [len(s) for s in split_pairs(data, seed=0)] == [70, 10, 20]


def test_split_pairs_keep_val_false_trains_on_the_validation_share():
    assert [len(s) for s in split_pairs(_toy(100), seed=0, keep_val=False)] == [80, 0, 20]


@pytest.mark.parametrize("data, options, error, message", [
    (_toy(2), {}, ValueError, "toy has 2 distinct pairs: too few"),
    (_toy(20), {"val_size": 10, "test_size": 10}, ValueError, "too few for a validation split of 10 and a test split"),
    (_toy(20), {"train_size": 30}, ValueError, r"train_size=30 is larger than the 14 pairs left"),
    (_toy(20), {"test_size": 0}, ArgumentError, r"test_size must be a positive integer; got 0\."),
    (PairData("one", [_user("same prompt")] * 20, [f"good {i}" for i in range(20)], ["bad"] * 20), {}, ValueError,
     "Cannot make a test split of one: its 20 pairs form 1 groups"),
])
def test_split_pairs_says_what_is_wrong(data, options, error, message):
    with pytest.raises(error, match=message):
        split_pairs(data, **options)


# --- inspecting, on the command line -------------------------------------------------------------------------

def test_inspect_data_describes_preference_pairs(tmp_path):
    rows = STANDARD + [{"prompt": "Name a colour.", "chosen": "Blue, like the sky at noon", "rejected": "Seven."},
                       STANDARD[1]]
    report = inspect_data(_jsonl(tmp_path / "prefs.jsonl", rows))
    assert report["task"] == "text generation" and report["type"] == "preference"
    assert report["format"] == "standard" and report["examples"] == 4 and report["duplicates"] == 1
    assert report["words"] == {"prompt": (3 + 3 + 3 + 3) / 4, "chosen": (1 + 1 + 6 + 1) / 4,
                               "rejected": (3 + 1 + 1 + 1) / 4}
    assert report["chosen_longer"] == 1 / 4
    assert report["first"] == {"line": 1, "prompt": [("user", "Capital of France?")], "chosen": "Paris.",
                               "rejected": "Lyon, I believe."}
    assert report["splits"] == {"train": 1, "validation": 1, "test": 1} and report["warnings"] == []


def test_inspect_warns_when_the_chosen_answer_is_nearly_always_the_longer_one(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"a long and careful answer {i}", "rejected": f"no {i}",
             "group": i // 2} for i in range(20)]
    report = inspect_data(_jsonl(tmp_path / "long.jsonl", rows))
    assert report["chosen_longer"] == 1.0 and report["groups"] == 10
    assert sum(report["splits"].values()) == 20
    assert report["warnings"] == ["the chosen answer is the longer one in 100% of the pairs: DPO may learn that "
                                  "longer is better rather than what makes an answer better; balance the lengths, or "
                                  "compare the answers' lengths before and after tuning"]


def test_ftlib_datasets_inspect_shows_the_format_and_the_first_pair(tmp_path, capsys):
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}] + _user("Q" * 200),
             "chosen": _reply("good"), "rejected": _reply("bad")}] * 2
    path = _jsonl(tmp_path / "conv.jsonl", rows)
    assert main(["datasets", "--inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: preference pairs (text generation), conversational format, 2 pairs, 1 duplicates" in out
    assert "the chosen answer is the longer one in 0% of the pairs" in out
    assert "first pair (line 1):\n  system: Be brief.\n  user: " + "Q" * 67 + "...\n  chosen: good\n  rejected: bad" \
        in out
    csv_path = tmp_path / "prefs.csv"
    csv_path.write_text("prompt,chosen,rejected\n" + "".join(f"q{i},good {i},bad {i}\n" for i in range(10)),
                        encoding="utf-8")
    assert main(["datasets", "--inspect", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "standard format, 10 pairs\n" in out and "train 7 / validation 1 / test 2" in out


def test_ftlib_datasets_inspect_on_a_bad_pair_file_prints_one_line_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,chosen,rejected\nhello,world,planet\nsame,Yes,yes\n", encoding="utf-8")
    before = _state(path)
    assert main(["datasets", "--inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"ftlib datasets: error: {path}, line 3: 'chosen' and 'rejected' are the same answer "
                            "(ignoring case and spacing): nothing to prefer.\n")
    assert _state(path) == before
