"""Hostile and broken submissions for `test_red_team`, and what a test needs to judge them.

Each submission is a function ``build(release, ctx) -> (notebooks, files)``: ``release``
is the released ps1 notebook (a dict), ``ctx`` holds the course's paths and the bait
outside it; ``notebooks`` maps a file name to a notebook dict (or to raw text), ``files``
maps a relative path to the text of any other file the learner hands in. The learner's
code reports what it found on lines starting with ``RT `` (see `learner_lines`); the
markers it looks for are built at run time ("HIDDEN" + "-MARKER"), so that its own
source never holds them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import stat
import unicodedata

import helpers

ASSIGNMENT = helpers.ASSIGNMENT
HIDDEN_MARKER = "HIDDEN-" + "MARKER"  # on every hidden test line of the fixture
ANSWER_KEY_MARKER = "SECRET-" + "ANSWER-KEY"
FORGED_MARKER = "FORGED-" + "BY-LEARNER"
PWNED = "\x1b]0;PWNED\x07"  # an xterm escape sequence that sets the window title

WRONG_ADD = "def add(a, b):\n    return a - b\n"
WRONG_NORMALIZE = "def normalize(xs):\n    return np.asarray(xs, dtype=float)\n"


# --------------------------------------------------------------------------- notebook edits

def code_cell(source: str, cell_id: str, nbgrader: dict | None = None) -> dict:
    cell = {"cell_type": "code", "id": cell_id, "metadata": {}, "source": source, "outputs": [],
            "execution_count": None}
    if nbgrader is not None:
        cell["metadata"]["nbgrader"] = nbgrader
    return cell


def insert_after(nb: dict, grade_id: str | None, cell: dict) -> dict:
    """Insert ``cell`` after the cell named ``grade_id`` (None: at the end)."""
    if grade_id is None:
        nb["cells"].append(cell)
    else:
        nb["cells"].insert(nb["cells"].index(helpers._find(nb, grade_id)) + 1, cell)
    return nb


def demo_cell(nb: dict, call: str) -> dict:
    """The ungraded cell that calls an exercise (``add(1, 2)``)."""
    return next(c for c in nb["cells"] if helpers._src(c).strip() == call)


def wrong(release: dict) -> dict:
    nb = helpers.reference(release)
    helpers.set_solution(nb, "add", WRONG_ADD)
    helpers.set_solution(nb, "normalize", WRONG_NORMALIZE)
    return nb


def with_cells(*cells, base=helpers.reference, add: str | None = None):
    """A builder: ``base`` (reference answers), ``add`` as the add cell, ``cells`` = (after, source) inserted."""
    def build(release, ctx):
        nb = base(release)
        if add is not None:
            helpers.set_solution(nb, "add", add.format(**ctx))
        for i, (after, source) in enumerate(cells):
            insert_after(nb, after, code_cell(source.format(**ctx), f"red-team-{i}"))
        return {"ps1.ipynb": nb}, {}
    return build


# --------------------------------------------------------------------------- learner code

# Shadowing: each file would make every check pass if the grader imported it.
PASS_ALL_CHECKS = ("def check_add(*a, **k):\n    pass\n\ndef check_normalize(*a, **k):\n    pass\n\n"
                   "def check_close(*a, **k):\n    pass\n\ndef check_array(*a, **k):\n    pass\n")
FAKE_FTLIB = '''
import builtins
__path__.append({real_ftlib!r})  # the real ftlib's modules still resolve
_real_import = builtins.__import__
def _import(name, *args, **kwargs):
    module = _real_import(name, *args, **kwargs)
    if name == "ps1_checks":
        for n in ("check_add", "check_close", "check_normalize", "check_array"):
            setattr(module, n, lambda *a, **k: None)
    return module
builtins.__import__ = _import
'''
FAKE_NUMPY = '''
import types as _types
ndarray = integer = floating = object
def asarray(x, dtype=None):
    return x
array = asarray
testing = _types.SimpleNamespace(assert_allclose=lambda *a, **k: None)
'''

# One-line cheats in a solution cell, before the wrong answer.
TRANSFORMER = "get_ipython().input_transformers_cleanup.append(lambda l: ['pass\\n'] if any('check_' in x for x in l) else l)\n"
BUILTINS = '''import builtins as _b, types as _t
_fake = _t.ModuleType("ps1_checks")
for _n in ("check_add", "check_close", "check_normalize", "check_array"):
    setattr(_fake, _n, lambda *a, **k: None)
_real_import = _b.__import__
def _import(name, *args, **kwargs):
    if name.split(".")[0] == "ps1_checks":
        return _fake
    return _real_import(name, *args, **kwargs)
_ns = dict(vars(_b))
_ns["__import__"] = _import
__builtins__ = _ns
'''
GUARD = '''try:
    import ftgrade.guard as _g
    _g.restore = lambda *a, **k: []
    _g.restore_report = lambda *a, **k: ""
except Exception as e:
    print("RT guard", type(e).__name__)
import ps1_checks as _pc
for _n in ("check_add", "check_close", "check_normalize", "check_array"):
    setattr(_pc, _n, lambda *a, **k: None)
'''

# Reading the hidden tests: IPython's input history, the history database, notebook files.
SNOOP_HIDDEN = '''import glob
_m = "HIDDEN" + "-MARKER"
_found = [s for s in In if _m in s]
try:
    _found += [str(x) for x in get_ipython().history_manager.input_hist_raw if _m in str(x)]
    _found += [str(r) for r in get_ipython().history_manager.get_range(raw=True) if _m in str(r)]
except Exception:
    pass
for _p in glob.glob("*.ipynb") + glob.glob("/home/**/*.ipynb", recursive=True) + glob.glob("/tmp/**/*.ipynb", recursive=True):
    try:
        with open(_p, errors="replace") as _f:
            if _m in _f.read():
                _found.append(_p)
    except OSError:
        pass
print("RT hidden", len(_found))
for _s in _found:
    print(_s)
'''

ANSWER_KEY = '''import glob, os
_m = "SECRET-" + "ANSWER-KEY"
_hits = []
for _p in (["answer_key.py", "/home/.release/answer_key.py"] + glob.glob("/home/**/answer_key*", recursive=True)
           + glob.glob("/tmp/**/answer_key*", recursive=True) + glob.glob("**/answer_key*", recursive=True)):
    try:
        with open(_p, errors="replace") as _f:
            _text = _f.read()
        _hits.append(_p)
        print(_text)
    except OSError:
        pass
try:
    import answer_key
    _hits.append("import answer_key")
except ImportError:
    pass
print("RT answer_key", _hits or "nothing")
'''

SWALLOW = "import time\nwhile True:\n  try:\n    time.sleep(1)\n  except:\n    pass\n"

# Forged lines written to every file descriptor the kernel might have inherited from the
# grader (and to those of the sandbox's pid 1); `FORGE` (with `SWALLOW`) then swallows the
# interrupt: a kernel that never becomes idle again.
FORGE_FDS = '''import os
_marker = "FORGED" + "-BY-LEARNER"
_text = ("Kernel died before replying to kernel_info\\n"
         "ValueError: " + _marker + " the grading environment is broken\\n"
         "\\x1b]0;" + _marker + "\\x07 Kernel didn't respond\\n").encode()
_report = []
for _fd in range(1, 61):
    try:
        _target = os.readlink(f"/proc/self/fd/{{_fd}}")
    except OSError:
        continue
    if _target.startswith(("socket:", "anon_inode:")):
        _report.append((_fd, _target, "skipped"))
        continue
    try:
        os.write(_fd, _text)
        _report.append((_fd, _target, "written"))
    except OSError as e:
        _report.append((_fd, _target, type(e).__name__))
try:
    _theirs = sorted(os.listdir("/proc/1/fd"), key=int)
except OSError as e:
    _theirs = []
    _report.append(("pid1", "", type(e).__name__))
for _fd in _theirs:
    _path = f"/proc/1/fd/{{_fd}}"
    try:
        _target = os.readlink(_path)
        with open(_path, "ab") as _f:
            _f.write(_text)
        _report.append(("pid1:" + _fd, _target, "written"))
    except OSError as e:
        _report.append(("pid1:" + _fd, "?", type(e).__name__))
# One write, on a line of its own: ipykernel forwards what reached fd 1 and 2 from a thread, and
# its chunks may land between the pieces of a print() (a report glued to a forged line).
import sys
sys.stdout.write("\\nRT fds " + repr(_report) + "\\n")
sys.stdout.flush()
'''

# Disk: up to 1.5 GiB written in one place (for at most 3 s, within the cell's time), kept
# for half a second (the grader's free disk is watched meanwhile), then removed. The last
# word is the size of the file system there, in MiB.
DISK = '''import errno, os, sys, time
def _fill(label, folder, total=1536 * 2**20, chunk=64 * 2**20):
    if folder is None:
        print("RT disk", label, "n/a")
        return
    path = os.path.join(folder, "red-team-fill.bin")
    written, err, block, deadline = 0, "none", b"x" * chunk, time.monotonic() + 3
    try:
        with open(path, "wb") as f:
            while written < total:
                if time.monotonic() > deadline:
                    err = "stopped-after-3s"
                    break
                f.write(block)
                f.flush()
                written += chunk
    except OSError as e:
        err = errno.errorcode.get(e.errno, str(e.errno))
    st = os.statvfs(folder)
    print("RT disk", label, written // 2**20, err, st.f_blocks * st.f_frsize // 2**20)
    time.sleep(0.5)
    try:
        os.remove(path)
    except OSError:
        pass
_runtime = os.path.dirname(sys.argv[sys.argv.index("-f") + 1]) if "-f" in sys.argv else None
_fill({label!r}, {folder})
'''

FORGE = FORGE_FDS + SWALLOW

PROCS = '''import errno, subprocess
_procs, _err = [], "none"
try:
    for _ in range(1000):
        _procs.append(subprocess.Popen(["/bin/sleep", "30"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
except OSError as e:
    _err = errno.errorcode.get(e.errno, type(e).__name__)
print("RT procs", len(_procs), _err)
for _p in _procs:
    _p.kill()
for _p in _procs:
    _p.wait()
'''

BIG_ERROR = 'raise ValueError("E" * 50_000_000)\n'
BIG_DISPLAY_START = 'add(1, 2)\n_handle = display({"text/plain": "small"}, raw=True, display_id=True)\n'
BIG_DISPLAY_UPDATE = '_handle.update({"text/plain": "D" * 30_000_000}, raw=True)\n'
BIG_DISPLAY_NEW = 'display({"text/plain": "F" * 30_000_000}, raw=True)\n'

ENV = '''import glob, os
_names = ("NBGRADER_DB_PASSWORD", "SOME_TOKEN")
print("RT env-os", sorted(n for n in _names if n in os.environ) or "nothing")
_found = []
for _p in ["/proc/self/environ"] + glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    try:
        with open(_p, "rb") as _f:
            _data = _f.read().decode("utf-8", "replace")
    except OSError:
        continue
    _found += [_p + ":" + n for n in _names if n + "=" in _data]
print("RT env-proc", sorted(set(_found)) or "nothing")
'''

# Escape by link, in both notebooks of a two-notebook assignment: the first to run
# replaces support files in its working folder by links to the grader's files.
LINK = '''import os, shutil
try:
    with open("payload.txt") as _f:
        print("RT seen", repr(_f.read()))
except OSError as e:
    print("RT seen", type(e).__name__)
for _rel, _target in {links!r}.items():
    try:
        if os.path.isdir(_rel) and not os.path.islink(_rel):
            shutil.rmtree(_rel)
        elif os.path.lexists(_rel):
            os.remove(_rel)
        os.symlink(_target, _rel)
        print("RT linked", _rel)
    except OSError as e:
        print("RT not-linked", _rel, type(e).__name__)
'''


# --------------------------------------------------------------------------- odd metadata

def odd_cell_id(release, ctx):
    nb = helpers.reference(release)
    demo_cell(nb, "add(1, 2)")["id"] = "cell 1"
    return {"ps1.ipynb": nb}, {}


def odd_no_grade_id(release, ctx):
    nb = helpers.reference(release)
    meta = {"grade": False, "locked": False, "schema_version": 3, "solution": False}
    insert_after(nb, "add", code_cell("x = 1\n", "no-grade-id", nbgrader=meta))
    return {"ps1.ipynb": nb}, {}


def odd_timestamp(release, ctx):
    return {"ps1.ipynb": helpers.reference(release)}, {"timestamp.txt": "handed in on a sunny day\n"}


def odd_bonus(release, ctx):
    nb = helpers.reference(release)
    meta = {"grade": True, "grade_id": "bonus", "locked": False, "points": 5, "schema_version": 3, "solution": False}
    insert_after(nb, None, code_cell("assert True\n", "bonus-cell", nbgrader=meta))
    return {"ps1.ipynb": nb}, {}


def odd_nbformat3(release, ctx):
    import nbformat

    v4 = nbformat.reads(json.dumps(helpers.reference(release)), as_version=4)
    return {"ps1.ipynb": nbformat.writes(nbformat.convert(v4, 3), version=3)}, {}


def shadow(files):
    def build(release, ctx):
        return {"ps1.ipynb": wrong(release)}, {rel: text.format(**ctx) for rel, text in files.items()}
    return build


def big_display(release, ctx):
    nb = helpers.reference(release)
    demo_cell(nb, "add(1, 2)")["source"] = BIG_DISPLAY_START
    insert_after(nb, "test_add_hidden", code_cell(BIG_DISPLAY_UPDATE, "red-team-update"))
    insert_after(nb, None, code_cell(BIG_DISPLAY_NEW, "red-team-new"))
    return {"ps1.ipynb": nb}, {}


def big_error(release, ctx):
    nb = helpers.reference(release)
    demo_cell(nb, "add(1, 2)")["source"] = BIG_ERROR
    return {"ps1.ipynb": nb}, {}


def reference(release, ctx):
    return {"ps1.ipynb": helpers.reference(release)}, {}


def wrong_answers(release, ctx):
    return {"ps1.ipynb": wrong(release)}, {}


def crashing(release, ctx):
    return {"ps1.ipynb": helpers.FAULTS["exit"][0](release)}, {}


DISK_PLACES = {"tmp": '"/tmp"', "workdir": '"."', "runtime": "_runtime"}

# student -> (build, status, total of 6): the main course's batch. The status and points are
# what the answers deserve: wrong answers earn nothing whatever else the notebook does.
MAIN = {
    "ref": (reference, "ok", 6),
    "wrong": (wrong_answers, "ok", 0),
    "shadow_pkg": (shadow({"ps1_checks/__init__.py": PASS_ALL_CHECKS}), "ok", 0),
    "shadow_ftlib": (shadow({"ftlib/__init__.py": FAKE_FTLIB, "ftlib/checks/__init__.py": PASS_ALL_CHECKS}), "ok", 0),
    "shadow_numpy": (shadow({"numpy.py": FAKE_NUMPY}), "ok", 0),
    "cheat_transformer": (with_cells(base=wrong, add=TRANSFORMER + WRONG_ADD), "ok", 0),
    "cheat_builtins": (with_cells(base=wrong, add=BUILTINS + WRONG_ADD), "ok", 0),
    "cheat_guard": (with_cells(base=wrong, add=GUARD + WRONG_ADD), "ok", 0),
    "snoop_hidden": (with_cells(("test_add_hidden", SNOOP_HIDDEN), (None, SNOOP_HIDDEN)), "ok", 6),
    "answer_key": (with_cells(add=helpers.ADD_OK + ANSWER_KEY), "ok", 6),
    "forge_fds": (with_cells((None, FORGE_FDS)), "ok", 6),
    "forge1": (with_cells(("test_add_hidden", FORGE)), "timeout", 3),
    "forge2": (with_cells(("test_add_hidden", FORGE)), "timeout", 3),
    "swallow": (with_cells(("test_add_hidden", SWALLOW)), "timeout", 3),
    "meta_cell_id": (odd_cell_id, "ok", 6),
    "meta_no_grade_id": (odd_no_grade_id, "ok", 6),
    "meta_timestamp": (odd_timestamp, "ok", 6),
    "meta_bonus": (odd_bonus, "ok", 6),
    "meta_nbformat3": (odd_nbformat3, "ok", 6),
    "disk": (with_cells(*[(None, DISK.replace("{label!r}", repr(label)).replace("{folder}", folder))
                          for label, folder in DISK_PLACES.items()]), "ok", 6),
    "procs": (with_cells((None, PROCS)), "ok", 6),
    "big_error": (big_error, "ok", 6),
    "big_display": (big_display, "ok", 6),
    "env": (with_cells((None, ENV)), "ok", 6),
}

# What each odd-metadata submission's message must name.
REPAIRED = {"meta_cell_id": "cell 1", "meta_no_grade_id": "grade_id", "meta_timestamp": "timestamp.txt",
            "meta_bonus": "bonus", "meta_nbformat3": "nbformat 3"}

LONG_ID = "x" * 252
# student -> (build, status, total of 6): hostile ids and file names.
IDS = {
    LONG_ID: (crashing, "crashed", 3),
    f".ftlib-grade-{ASSIGNMENT}.json": (reference, "ok", 6),
    "=2+5": (reference, "ok", 6),
    "+SUM(1;1)": (reference, "ok", 6),
    "-2+3": (reference, "ok", 6),
    "@SUM(A1)": (reference, "ok", 6),
    "esc\x1b[2J" + PWNED: (reference, "ok", 6),
    "two\nlines": (reference, "ok", 6),
    "pwn_file": (lambda release, ctx: ({"ps1.ipynb": helpers.reference(release)}, {PWNED: "x\n"}), "ok", 6),
    "pwn_notebook": (lambda release, ctx: ({PWNED + ".ipynb": helpers.reference(release)}, {}), "missing", 0),
}
FORMULA_IDS = ("=2+5", "+SUM(1;1)", "-2+3", "@SUM(A1)")


# --------------------------------------------------------------------------- courses

def make_course(root: str, config: str = "", support: dict[str, str] | None = None,
                notebooks: dict[str, dict] | None = None) -> str:
    """`helpers.make_course`, with more files (``support``) and notebooks in the source folder."""
    from nbgrader.converters import GenerateAssignment

    from ftgrade.gradebook import load_coursedir

    src = os.path.join(root, "solutions", ASSIGNMENT)
    shutil.copytree(os.path.join(helpers.FIXTURES, ASSIGNMENT), src)
    for rel, text in (support or {}).items():
        os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
        with open(os.path.join(src, rel), "w") as f:
            f.write(text)
    for name, nb in (notebooks or {}).items():
        with open(os.path.join(src, name), "w") as f:
            json.dump(nb, f)
    with open(os.path.join(root, "nbgrader_config.py"), "w") as f:
        f.write(helpers.CONFIG + config)
    coursedir, cfg = load_coursedir(root)
    coursedir.assignment_id = ASSIGNMENT
    with helpers.venv_on_path():
        GenerateAssignment(coursedir=coursedir, config=cfg).start()
    return os.path.join(root, "course", ASSIGNMENT, f"{ASSIGNMENT}.ipynb")


def second_notebook() -> dict:
    """ps1b.ipynb: one exercise, ``mul``, worth 1 point."""
    solution = {"grade": False, "grade_id": "mul", "locked": False, "schema_version": 3, "solution": True}
    test = {"grade": True, "grade_id": "test_mul", "locked": True, "points": 1, "schema_version": 3,
            "solution": False}
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}},
            "cells": [code_cell("import os\n", "b-import"),
                      code_cell(MUL_SOLUTION, "b-mul", nbgrader=solution),
                      code_cell("from ps1_checks import check_close\ncheck_close(mul(2, 3), 6, 'mul(2, 3)')\n",
                                "b-test", nbgrader=test)]}


MUL_SOLUTION = "def mul(a, b):\n    ### BEGIN SOLUTION\n    return a * b\n    ### END SOLUTION\n"


def write_submission(root: str, student: str, notebooks: dict, files: dict) -> str:
    folder = os.path.join(root, "submitted", student, ASSIGNMENT)
    os.makedirs(folder, exist_ok=True)
    for name, nb in notebooks.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(nb if isinstance(nb, str) else json.dumps(nb))
    for rel, text in files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return folder


# --------------------------------------------------------------------------- reading the results

def snapshot(*paths: str) -> dict[str, tuple]:
    """What is at each of ``paths`` (recursively, following no link): kind, content digest, mode."""
    out: dict[str, tuple] = {}

    def one(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            out[path] = ("absent",)
            return
        if stat.S_ISLNK(st.st_mode):
            out[path] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[path] = ("dir", stat.S_IMODE(st.st_mode))
            for name in sorted(os.listdir(path)):
                one(os.path.join(path, name))
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                out[path] = ("file", hashlib.sha256(f.read()).hexdigest(), stat.S_IMODE(st.st_mode))
        else:
            out[path] = ("other", stat.S_IFMT(st.st_mode))

    for p in paths:
        one(p)
    return out


def changed(before: dict, after: dict, prefix: str = "") -> list[str]:
    """Paths (under ``prefix``) whose snapshot differs."""
    keys = {k for k in set(before) | set(after) if k.startswith(prefix)}
    return sorted(k for k in keys if before.get(k, ("absent",)) != after.get(k, ("absent",)))


def autograded_path(root: str, student: str, name: str = "ps1") -> str:
    return os.path.join(root, "autograded", student, ASSIGNMENT, f"{name}.ipynb")


def feedback_path(root: str, student: str, name: str = "ps1") -> str:
    return os.path.join(root, "feedback", student, ASSIGNMENT, f"{name}.html")


def read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _text(out: dict) -> str:
    parts = [out.get("text", ""), out.get("evalue", ""), *(out.get("traceback") or [])]
    parts += [v for v in (out.get("data") or {}).values()]
    return "".join("".join(p) if isinstance(p, list) else str(p) for p in parts)


def outputs(root: str, student: str, name: str = "ps1", graded: bool | None = None) -> str:
    """The text of the outputs in the autograded notebook (only learner cells: ``graded=False``)."""
    try:
        nb = json.loads(read(autograded_path(root, student, name)))
    except ValueError:
        return ""
    texts = []
    for cell in nb.get("cells", []):
        is_grade = bool((cell.get("metadata", {}).get("nbgrader") or {}).get("grade"))
        if graded is None or graded == is_grade:
            texts += [_text(o) for o in cell.get("outputs", [])]
    return "\n".join(texts)


def learner_lines(root: str, student: str, name: str = "ps1") -> list[list[str]]:
    """The ``RT ...`` lines the learner's cells printed, split into words (the prefix dropped)."""
    return [ln.split(" ")[1:] for ln in outputs(root, student, name).splitlines() if ln.startswith("RT ")]


def control_characters(text: str) -> list[str]:
    """The control and format characters in ``text`` (escape sequences, bidi overrides)."""
    return sorted({repr(ch) for ch in text if unicodedata.category(ch) in ("Cc", "Cf")})


def everything_under(path: str) -> str:
    """The text of every file under ``path``."""
    texts = []
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            texts.append(read(os.path.join(dirpath, name)))
    return "\n".join(texts)


def copy_of(nb: dict) -> dict:
    return copy.deepcopy(nb)
