"""Build a throw-away nbgrader course around the toy assignment ps1, and faulty submissions.

`make_course` copies ``fixtures/ps1`` to ``<root>/solutions/ps1`` and runs nbgrader's
generate_assignment (release in ``<root>/course/ps1``, gradebook in ``<root>``).
`FAULTS` maps a student id to a function that turns the released notebook (a dict) into
that student's submission; `write_submission` writes it under ``submitted/``.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from contextlib import contextmanager

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
ASSIGNMENT = "ps1"
CONFIG = """c = get_config()
import os
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"
c.Execute.timeout = 5
"""


@contextmanager
def venv_on_path():
    """nbgrader runs the `alembic` executable when it creates a gradebook: put ours on PATH."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def make_course(root: str, config: str = "", edit=None) -> str:
    """Create the course at ``root`` and release ps1; return the released notebook's path.

    ``config`` is appended to the course's ``nbgrader_config.py``; ``edit(source_nb)``
    may change the source notebook (a dict) before the release.
    """
    from nbgrader.converters import GenerateAssignment

    from ftgrade.gradebook import load_coursedir

    shutil.copytree(os.path.join(FIXTURES, ASSIGNMENT), os.path.join(root, "solutions", ASSIGNMENT))
    if edit is not None:
        path = os.path.join(root, "solutions", ASSIGNMENT, f"{ASSIGNMENT}.ipynb")
        nb = load(path)
        edit(nb)
        with open(path, "w") as f:
            json.dump(nb, f)
    with open(os.path.join(root, "nbgrader_config.py"), "w") as f:
        f.write(CONFIG + config)
    coursedir, cfg = load_coursedir(root)
    coursedir.assignment_id = ASSIGNMENT
    with venv_on_path():
        GenerateAssignment(coursedir=coursedir, config=cfg).start()
    return os.path.join(root, "course", ASSIGNMENT, f"{ASSIGNMENT}.ipynb")


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _src(cell) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def _find(nb: dict, grade_id: str) -> dict:
    for cell in nb["cells"]:
        if (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id") == grade_id:
            return cell
    raise KeyError(grade_id)


def set_solution(nb: dict, grade_id: str, source: str) -> dict:
    _find(nb, grade_id)["source"] = source
    return nb


def reference(release: dict) -> dict:
    """The released notebook with the reference answers filled in."""
    nb = copy.deepcopy(release)
    source = load(os.path.join(FIXTURES, ASSIGNMENT, f"{ASSIGNMENT}.ipynb"))
    for gid in ("add", "normalize"):
        set_solution(nb, gid, _src(_find(source, gid)))
    return nb


ADD_OK = 'def add(a, b):\n    return a + b\n'
NORMALIZE_OK = ('def normalize(xs):\n    xs = np.asarray(xs, dtype=float)\n    return xs / xs.sum()\n')


def _with(add=None, normalize=None):
    def build(release):
        nb = reference(release)
        if add is not None:
            set_solution(nb, "add", add)
        if normalize is not None:
            set_solution(nb, "normalize", normalize)
        return nb
    return build


def _edit(fn):
    def build(release):
        nb = reference(release)
        fn(nb)
        return nb
    return build


def _delete_hidden(nb):
    nb["cells"].remove(_find(nb, "test_add_hidden"))


def _duplicate_test(nb):
    cell = _find(nb, "test_add")
    dup = copy.deepcopy(cell)
    dup["id"] = "dup-cell"
    nb["cells"].insert(nb["cells"].index(cell) + 1, dup)


def _edit_test(nb):
    set_solution(nb, "add", "def add(a, b):\n    return a - b\n")
    _find(nb, "test_add")["source"] = "pass  # edited by the learner"
    _find(nb, "test_add_hidden")["source"] = "pass"


def _points(nb):
    _find(nb, "test_add")["metadata"]["nbgrader"]["points"] = 100


def _dup_ids(nb):
    for cell in nb["cells"]:
        cell["id"] = "same-id"


def _kernelspec(nb):
    nb["metadata"]["kernelspec"] = {"name": "ir", "display_name": "R", "language": "R"}


LEAK_PROBE = """
import os, socket
def add(a, b):
    return a + b
ROOT = {root!r}
for path in [ROOT + "/solutions/ps1/ps1.ipynb", ROOT + "/gradebook.db", "ps1.ipynb"]:
    try:
        data = open(path, "rb").read()
        print("LEAK", path, len(data), ("HIDDEN-" + "MARKER").encode() in data)
    except Exception as e:
        print("LEAK", path, "blocked", type(e).__name__)
print("LEAK cwd", sorted(os.listdir(".")))
try:
    socket.create_connection(("1.1.1.1", 53), timeout=3).close()
    print("LEAK network open")
except OSError as e:
    print("LEAK network blocked", type(e).__name__)
"""

ALWAYS_EQUAL = """
class Anything(float):
    def __eq__(self, other):
        return True
    __hash__ = float.__hash__
def add(a, b):
    return Anything(42)
"""

NOISY = """
import sys, warnings
from tqdm import tqdm
def add(a, b):
    warnings.warn("a deprecation-style warning from a library")
    for _ in tqdm(range(3), file=sys.stderr, mininterval=0):
        pass
    print("noise on stderr", file=sys.stderr)
    return a + b
"""

# student id -> (builder or None for special files, expected status, expected total out of 6)
FAULTS = {
    "ref": (reference, "ok", 6),
    "stub": (lambda release: copy.deepcopy(release), "ok", 0),
    "syntax": (_with(add="def add(a, b)\n    return a + b\n"), "ok", 3),
    "loop": (_with(add="def add(a, b):\n    while True:\n        pass\n"), "timeout", 3),
    "flood": (_with(add=ADD_OK + "while True:\n    print('spam ' * 200)\n"), "timeout", 6),
    "memory": (_with(normalize=NORMALIZE_OK + "blocks = [np.ones(2**25) for _ in range(400)]\n"), "memory", 0),
    "memory_error": (_with(add="def add(a, b):\n    bytearray(1 << 60)\n    return a + b\n"), "memory", 3),
    "exit": (_with(normalize=NORMALIZE_OK + "import os\nos._exit(1)\n"), "crashed", 3),
    "deleted": (_edit(_delete_hidden), "ok", 6),
    "duplicated": (_edit(_duplicate_test), "ok", 6),
    "edited": (_edit(_edit_test), "ok", 3),
    "points": (_edit(_points), "ok", 6),
    "dupids": (_edit(_dup_ids), "ok", 6),
    "kernelspec": (_edit(_kernelspec), "ok", 6),
    "missing": (None, "missing", 0),
    "misnamed": (None, "missing", 0),
    "badjson": (None, "invalid notebook", 0),
    "patch_checks": (_with(add="import ps1_checks\nps1_checks.check_add = lambda f: None\n"
                              "ps1_checks.check_close = lambda *a: None\n"
                              "def add(a, b):\n    return a - b\n"), "ok", 3),
    "patch_numpy": (_with(normalize="import numpy.testing\n"
                                    "numpy.testing.assert_allclose = lambda *a, **k: None\n"
                                    "def normalize(xs):\n    return np.asarray(xs, dtype=float)\n"), "ok", 3),
    "always_equal": (_with(add=ALWAYS_EQUAL), "ok", 3),
    "leak": (None, "ok", 6),
    "noisy": (_with(add=NOISY), "ok", 6),
}


def write_submission(root: str, student: str, release_path: str) -> str:
    """Write ``student``'s submission (see `FAULTS`) under ``submitted/``; return its folder."""
    folder = os.path.join(root, "submitted", student, ASSIGNMENT)
    os.makedirs(folder, exist_ok=True)
    release = load(release_path)
    target = os.path.join(folder, f"{ASSIGNMENT}.ipynb")
    builder = FAULTS[student][0]
    if student == "missing":
        return folder
    if student == "misnamed":
        target = os.path.join(folder, f"{ASSIGNMENT} (1).ipynb")
        builder = reference
    if student == "badjson":
        with open(target, "w") as f:
            f.write(json.dumps(reference(release))[:-200])
        return folder
    if student == "leak":
        builder = _with(add=LEAK_PROBE.format(root=root))
    with open(target, "w") as f:
        json.dump(builder(release), f)
    return folder
