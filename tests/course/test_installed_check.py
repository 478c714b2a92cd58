"""`ftlib check` from an installed, non-editable ftlib, on a course folder outside the repository.

The editable install of the development environment reads every file from the working
tree, so a file that the wheel leaves out (package data, a module outside the package)
goes unnoticed there. Here ftlib is built into a wheel, installed into a folder of its
own and put first on PYTHONPATH; the commands run from outside the repository, so only
that copy can be imported. The course folder is a copy of the repository's nbgrader
layout (``nbgrader_config.py`` beside ``course/``), as a learner or a teacher has it.
Building, installing and the three commands take about 6 s.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from course_notebooks import ROOT, release_notebook, solution_notebook

NAME = "01_choose_model"
# What the wheel is built from: the project's metadata and the package, nothing else.
PROJECT_FILES = ("pyproject.toml", "README.md", "LICENSE")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The folder ftlib's wheel was installed into (``--target``, no dependencies)."""
    tmp = tmp_path_factory.mktemp("installed")
    src, dist, site = tmp / "src", tmp / "dist", tmp / "site"
    src.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "ftlib", src / "ftlib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    r = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    [wheel] = dist.glob("ftlib-*.whl")
    r = subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return site


def _run(site, args, *, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


@pytest.fixture
def course(tmp_path):
    """A course folder outside the repository: nbgrader_config.py and the released course/."""
    folder = tmp_path / "ftlib-course"
    folder.mkdir()
    shutil.copy2(ROOT / "nbgrader_config.py", folder / "nbgrader_config.py")
    shutil.copytree(ROOT / "course", folder / "course")
    return folder


def _learner_copy(folder, notebook):
    path = folder / NAME / f"{NAME}.ipynb"
    path.parent.mkdir(parents=True)
    shutil.copy2(notebook, path)
    return path


def test_the_installed_copy_is_the_one_imported(installed, tmp_path):
    r = _run(installed, [sys.executable, "-c", "import ftlib; print(ftlib.__file__)"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(installed) + os.sep), r.stdout


def test_ftlib_help_from_the_installed_copy(installed, tmp_path):
    r = _run(installed, [sys.executable, "-m", "ftlib", "--help"], cwd=tmp_path)
    assert r.returncode == 0 and "finetune" in r.stdout and "check" in r.stdout, r.stdout + r.stderr
    # The console script the wheel declares, as `pip install` writes it.
    r = _run(installed, [str(installed / "bin" / "ftlib"), "--help"], cwd=tmp_path)
    assert r.returncode == 0 and "finetune" in r.stdout, r.stdout + r.stderr


def test_check_passes_a_solution_in_a_learners_folder(installed, course):
    # A work folder inside the course folder: `ftlib check` finds nbgrader_config.py above
    # it, and the released notebook of the same name under its release directory.
    path = _learner_copy(course / "my-work", solution_notebook(NAME))
    r = _run(installed, [sys.executable, "-m", "ftlib", "check", str(path)], cwd=path.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("test_")]
    graded = [c for c in json.loads(release_notebook(NAME).read_text())["cells"]
              if c.get("metadata", {}).get("nbgrader", {}).get("grade") and c["cell_type"] == "code"]
    assert rows and len(rows) == len(graded), r.stdout
    assert all(row[2] in ("pass", "hidden") for row in rows), r.stdout
    assert any(row[2] == "pass" for row in rows), r.stdout
    passed, total = map(int, re.search(r"^(\d+)/(\d+) checks passed", r.stdout, re.M).groups())
    assert passed == total > 0, r.stdout


def test_check_fails_the_released_notebook_unanswered(installed, course, tmp_path):
    # A learner folder of its own, the course found with --release-dir.
    path = _learner_copy(tmp_path / "learner", course / "course" / NAME / f"{NAME}.ipynb")
    r = _run(installed, [sys.executable, "-m", "ftlib", "check", "--release-dir", str(course / "course"), str(path)],
             cwd=path.parent)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL" in r.stdout and re.search(r"^0/\d+ checks passed", r.stdout, re.M), r.stdout
