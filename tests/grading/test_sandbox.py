"""The grading sandbox is an allow-list: learner code that goes looking finds nothing.

The course lives outside the temporary directory (in ``/var/tmp``, as a course in an
instructor's home would), beside a fake grader home, another assignment and a file
outside the course; the grader's environment holds an API token. One submission
tries each class of forbidden read and prints what it found; each must come back
empty, in the graded notebook and in the feedback page.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest

import helpers
from ftgrade import sandbox
from ftgrade.grade import grade_assignment

pytestmark = pytest.mark.skipif(not sandbox.available()[0], reason="bubblewrap sandbox not available here")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "sk-test-" + "7" * 24

SNOOP = '''
import os
def add(a, b):
    return a + b
TARGETS = {targets!r}
for what, path in TARGETS.items():
    try:
        if os.path.isdir(path):
            found = sorted(os.listdir(path))
        else:
            with open(path, "rb") as f:
                found = f.read(200)
    except OSError as e:
        found = None
    print("SNOOP", what, "SEEN " + repr(found)[:120] if found else "nothing")
print("SNOOP env", "SEEN" if any("sk-test-" + "7" * 24 in v for v in os.environ.values()) else "nothing")
print("SNOOP uid", os.getuid())
print("SNOOP etc", sorted(os.listdir("/etc")))
print("SNOOP repo", sorted(os.listdir({repo!r})) if os.path.isdir({repo!r}) else [])
'''


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture(scope="module")
def snooped():
    base = tempfile.mkdtemp(prefix="ftlib-test-sandbox-", dir="/var/tmp" if os.access("/var/tmp", os.W_OK) else None)
    old_env = {k: os.environ.get(k) for k in ("HOME", "FTLIB_TEST_API_TOKEN")}
    try:
        root = os.path.join(base, "course")
        os.makedirs(root)
        release = helpers.make_course(root)
        home = os.path.join(base, "home", "instructor")
        _write(os.path.join(home, ".ssh", "id_ed25519"), "PRIVATE KEY")
        _write(os.path.join(base, "outside.txt"), "outside the course")
        _write(os.path.join(root, "solutions", "ps2", "ps2_answers.py"), "ANSWER = 42")
        shutil.copytree(os.path.join(root, "course", "ps1"), os.path.join(root, "course", "ps2"))
        ref = helpers.write_submission(root, "ref", release)
        targets = {
            "shadow": "/etc/shadow", "ssh_host_keys": "/etc/ssh", "root_home": "/root/.ssh", "homes": "/home",
            "grader_home": home, "grader_key": os.path.join(home, ".ssh", "id_ed25519"),
            "solutions": os.path.join(root, "solutions", "ps1", "ps1.ipynb"),
            "repo_solutions": os.path.join(REPO, "solutions"), "repo_readme": os.path.join(REPO, "README.md"),
            "grader_project": os.path.join(REPO, "grading", "pyproject.toml"),
            "gradebook": os.path.join(root, "gradebook.db"), "config": os.path.join(root, "nbgrader_config.py"),
            "other_submission": os.path.join(ref, "ps1.ipynb"), "submitted": os.path.join(root, "submitted"),
            "other_assignment": os.path.join(root, "solutions", "ps2", "ps2_answers.py"),
            "other_release": os.path.join(root, "course", "ps2"), "outside_course": os.path.join(base, "outside.txt"),
            "course_root": root, "opt": "/opt",
        }
        nb = helpers._with(add=SNOOP.format(targets=targets, repo=REPO))(helpers.load(release))
        os.makedirs(os.path.join(root, "submitted", "snoop", "ps1"))
        with open(os.path.join(root, "submitted", "snoop", "ps1", "ps1.ipynb"), "w") as f:
            json.dump(nb, f)
        os.environ["HOME"], os.environ["FTLIB_TEST_API_TOKEN"] = home, TOKEN
        rows = grade_assignment(helpers.ASSIGNMENT, course_dir=root, workers=2, timeout=60, cell_timeout=5,
                                memory=800 * 2**20, log=lambda line: None)
        with open(os.path.join(root, "autograded", "snoop", "ps1", "ps1.ipynb")) as f:
            graded = json.load(f)
        with open(os.path.join(root, "feedback", "snoop", "ps1", "ps1.html")) as f:
            page = f.read()
        out = "".join("".join(o.get("text", "")) for c in graded["cells"] for o in c.get("outputs", []))
        lines = {ln.split()[1]: ln.split(" ", 2)[2] for ln in out.splitlines() if ln.startswith("SNOOP ")}
        yield {r["student"]: r for r in rows}, targets, lines, page
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(base, ignore_errors=True)


def test_the_snooping_submission_still_scores(snooped):
    rows = snooped[0]
    assert (rows["snoop"]["status"], rows["snoop"]["total"]) == ("ok", 6), rows["snoop"]
    assert rows["ref"]["total"] == 6


@pytest.mark.parametrize("what", ["shadow", "ssh_host_keys", "root_home", "homes", "grader_home", "grader_key",
                                  "solutions", "repo_solutions", "repo_readme", "grader_project", "gradebook", "config",
                                  "other_submission", "submitted", "other_assignment", "other_release",
                                  "outside_course", "course_root", "opt", "env"])
def test_learner_code_sees_nothing_forbidden(snooped, what):
    _, _, lines, page = snooped
    # the submission's own working copy, /home/learner/ps1, and the release files it was copied
    # from (read-only, /home/.release)
    allowed = {"homes": "SEEN ['.release', 'learner']"}
    assert lines.get(what) in ("nothing", allowed.get(what)), lines
    assert "PRIVATE KEY" not in page and TOKEN not in page and "ANSWER = 42" not in page


def test_learner_runs_unprivileged_with_a_minimal_etc(snooped):
    _, _, lines, _ = snooped
    assert lines["uid"] == str(sandbox.UID)
    etc = set(eval(lines["etc"]))  # a list printed by the probe
    assert {"passwd", "group", "hosts"} <= etc
    assert not etc & {"shadow", "gshadow", "ssh", "sudoers", "ssl"}
    # ftlib's repository shows at most the packages (ftlib, grading/ftgrade) and the environment,
    # never its solutions.
    assert set(eval(lines["repo"])) <= {"ftlib", "grading", ".venv"}, lines["repo"]
