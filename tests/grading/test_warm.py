"""`ftlib check` served by a warm process: the same verdicts as a cold check, nothing kept between checks."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ftgrade import warm
from ftgrade.check import check_notebook

ROOT = Path(__file__).resolve().parents[2]  # the repository
RELEASE = str(ROOT / "course")


@pytest.fixture
def runtime(monkeypatch):
    # A short private folder of its own (socket paths are limited to ~100 characters).
    folder = tempfile.mkdtemp(prefix="fw", dir="/tmp")
    monkeypatch.setenv("XDG_RUNTIME_DIR", folder)
    monkeypatch.setenv("FTLIB_CHECK_WARM_IDLE", "120")
    yield folder
    for name in os.listdir(os.path.join(folder, f"ftlib-check-{os.getuid()}")) if os.path.isdir(
            os.path.join(folder, f"ftlib-check-{os.getuid()}")) else []:
        warm.stop(os.path.join(folder, f"ftlib-check-{os.getuid()}", name))
    shutil.rmtree(folder, ignore_errors=True)


def _copy_04(tmp_path, replace_head_source=None):
    nb = json.loads((ROOT / "solutions" / "04_modify_model" / "04_modify_model.ipynb").read_text())
    if replace_head_source is not None:
        for cell in nb["cells"]:
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "replace_head":
                cell["source"] = replace_head_source
    folder = tmp_path / f"n{len(list(tmp_path.iterdir()))}" / "04_modify_model"
    folder.mkdir(parents=True)
    (folder / "04_modify_model.ipynb").write_text(json.dumps(nb))
    return str(folder / "04_modify_model.ipynb")


def _verdicts(report):
    return [(r["grade_id"], r["status"], r["message"]) for r in report["results"]]


def _served(path, **kwargs):
    # The first check of a fresh server may find it still importing; it waits, it is not cold.
    return check_notebook(path, release_dir=RELEASE, warm_start=True, **kwargs)


def test_a_warm_check_gives_the_cold_verdicts_and_keeps_nothing_between_checks(runtime, tmp_path):
    wrong = _copy_04(tmp_path, "def replace_head(model, num_classes, dropout=0.0):\n    return model\n")
    # A learner cell that patches the libraries the checks use, at top level.
    cheat = _copy_04(tmp_path, "import torch, numpy\ntorch.allclose = lambda *a, **k: True\n"
                               "numpy.testing.assert_allclose = lambda *a, **k: None\n"
                               "def replace_head(model, num_classes, dropout=0.0):\n    return model\n")
    right = _copy_04(tmp_path)
    cold_wrong = check_notebook(wrong, release_dir=RELEASE, warm_start=False)
    cold_right = check_notebook(right, release_dir=RELEASE, warm_start=False)
    assert not cold_wrong["process"]["warm"]
    first = _served(right)  # none answers yet: runs cold and starts one
    assert not first["process"]["warm"]
    assert _verdicts(first) == _verdicts(cold_right)
    cheated = _served(cheat)
    assert cheated["process"]["warm"]
    assert dict((g, s) for g, s, _ in _verdicts(cheated))["test_replace_head_width_and_dropout"] == "fail"
    served_wrong, served_right = _served(wrong), _served(right)
    assert served_wrong["process"]["warm"] and served_right["process"]["warm"]
    assert _verdicts(served_wrong) == _verdicts(cold_wrong)
    assert _verdicts(served_right) == _verdicts(cold_right)
    assert all(s == "pass" for _, s, _ in _verdicts(served_right))


def test_a_served_check_that_runs_too_long_is_killed(runtime, tmp_path):
    env = dict(os.environ)
    path = warm.socket_path(env)
    warm.start(path, env)
    # Wait until the server has imported everything, so the 8 s below time the loop only.
    (tmp_path / "empty.json").write_text(json.dumps({"load": [], "grade": [], "timeout": 60, "watched": [],
                                                     "cwd": str(tmp_path)}))
    ready = warm.run(path, [str(tmp_path / "empty.json"), str(tmp_path / "empty.jsonl")], env=env,
                     cwd=str(tmp_path), timeout=300, show_output=False)
    assert ready is not None and ready.status == "ok"
    pid_file = tmp_path / "pid"
    spec = {"load": [{"kind": "solution", "label": "loop",
                      "source": f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\nwhile True: pass\n"}],
            "grade": [], "timeout": 1000, "watched": [], "cwd": str(tmp_path)}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    run = warm.run(path, [str(tmp_path / "spec.json"), str(tmp_path / "results.jsonl")], env=env,
                   cwd=str(tmp_path), timeout=8, show_output=False)
    assert run is not None and run.status == "timeout"
    pid = int(pid_file.read_text())
    for _ in range(50):
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), "the timed-out check is still running"


def test_a_server_serves_only_the_environment_and_code_it_imported(runtime, monkeypatch):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    assert warm.socket_path(env) == warm.socket_path(dict(env))
    assert warm.socket_path(env) != warm.socket_path(dict(env, HF_HUB_OFFLINE="0"))
    assert warm.socket_path(env) != warm.socket_path(dict(env, PYTHONPATH="/elsewhere"))
    assert warm.socket_path(env) == warm.socket_path(dict(env, PWD="/elsewhere"))  # not read on import
    folder = os.path.dirname(warm.socket_path(env))
    assert os.stat(folder).st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="needs root to act as another user")
def test_another_user_cannot_reach_the_server(runtime):
    env = dict(os.environ)
    path = warm.socket_path(env)
    warm.start(path, env)
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)\n")
    done = subprocess.run(["/usr/bin/python3", "-c", probe, path], user=1000, group=1000, env={"PATH": "/usr/bin"})
    assert done.returncode == 3


def test_warm_checks_are_off_in_ci_under_a_memory_limit_and_when_asked(monkeypatch):
    monkeypatch.delenv("FTLIB_CHECK_WARM", raising=False)
    monkeypatch.setenv("CI", "true")
    assert not warm.enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setattr(warm, "available_memory", lambda: 2 * 2**30)
    assert not warm.enabled()  # Binder: 2 GiB in all
    monkeypatch.setattr(warm, "available_memory", lambda: 8 * 2**30)
    assert warm.enabled() and not warm.enabled(memory=2**30)
    monkeypatch.setenv("FTLIB_CHECK_WARM", "0")
    assert not warm.enabled()


def test_stop_says_when_no_server_listens(runtime):
    assert warm.stop(warm.socket_path(dict(os.environ))) is False


def test_a_cold_check_starts_the_warm_server_before_it_runs_not_after(runtime, tmp_path, monkeypatch):
    # The server imports on the second core while the first, cold check runs, so it is
    # ready sooner; started afterwards, a learner's second check soon after waited for it.
    import ftgrade.check as check_module

    order = []
    monkeypatch.setattr(check_module.warm, "start", lambda path, env: order.append("server started"))
    real_run = check_module.run_limited
    monkeypatch.setattr(check_module, "run_limited",
                        lambda *a, **k: (order.append("cold check"), real_run(*a, **k))[1])
    report = check_notebook(_copy_04(tmp_path), release_dir=RELEASE, warm_start=True)
    assert not report["process"]["warm"]
    assert order == ["server started", "cold check"]
