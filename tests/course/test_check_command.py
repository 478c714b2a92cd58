"""`ftlib check` on a real course notebook: what a learner's own cells cannot change."""
import json
import shutil

from ftgrade import _runner
from ftgrade.check import check_notebook
from course_notebooks import ROOT

# A learner copy of 04 whose replace_head is wrong (it keeps the old head) and whose
# solution cell also replaces the check itself by one that always passes.
_CHEAT = '''def replace_head(model, num_classes, dropout=0.0):
    return model

from ftlib.checks import modify_model as _m
_m.check_replace_head = lambda *args, **kwargs: None
'''


def _learner_copy(tmp_path, source):
    # Outside the repository, as a learner's work folder is; the course copy is found
    # with --release-dir, as from a course folder of their own.
    nb = json.loads((ROOT / "course" / "04_modify_model" / "04_modify_model.ipynb").read_text())
    for cell in nb["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "replace_head":
            cell["source"] = source
    path = tmp_path / "04_modify_model" / "04_modify_model.ipynb"
    path.parent.mkdir()
    path.write_text(json.dumps(nb))
    return path


def test_patching_a_checks_submodule_is_undone(tmp_path):
    path = _learner_copy(tmp_path, _CHEAT)
    report = check_notebook(str(path), exercise="replace_head", timeout=60, release_dir=str(ROOT / "course"))
    [result] = report["results"]
    assert result["status"] == "fail", result
    assert "The head was not replaced" in result["message"]
    assert "ftlib.checks.modify_model.check_replace_head" in result.get("restored", []), result


def test_modules_to_watch_keeps_submodules_and_the_checks_preloads():
    modules = _runner._modules_to_watch(["ftlib", "ftlib.checks"],
                                        ["ftlib.checks.modify_model", "ftlib.checks.CheckFailure"])
    assert "ftlib.checks.modify_model" in modules  # `from ftlib.checks import modify_model`
    assert "ftlib.checks.CheckFailure" not in modules  # a class, not a module
    # What its checks build (a tiny BERT) is imported once, before the grade cells fork.
    assert "transformers.models.bert.modeling_bert" in modules


def test_a_failed_check_shows_expected_found_and_hint_in_the_terminal(tmp_path, capsys):
    from ftgrade.check import check_main

    path = _learner_copy(tmp_path, "def replace_head(model, num_classes, dropout=0.0):\n    return model\n")
    status = check_main([str(path), "--exercise", "replace_head", "--release-dir", str(ROOT / "course")])
    out = capsys.readouterr().out
    assert status == 1
    details = out.split("test_replace_head_width_and_dropout failed:", 1)[1]
    assert "expected:" in details and "found:" in details and "hint:" in details, out


def test_a_missing_release_says_how_to_point_at_it(tmp_path, capsys):
    from ftgrade.check import check_main

    path = _learner_copy(tmp_path, "def replace_head(model, num_classes, dropout=0.0):\n    return model\n")
    check_main([str(path), "--exercise", "replace_head", "--release-dir", str(tmp_path / "nowhere")])
    assert "--release-dir PATH" in capsys.readouterr().out
