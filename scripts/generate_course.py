"""Regenerate the learner notebooks in course/ from the instructor notebooks in solutions/.

    python scripts/generate_course.py            # rewrite course/<assignment>/ for every assignment
    python scripts/generate_course.py 02_prepare_data
    python scripts/generate_course.py --check    # exit 1 if course/ differs from what generation gives

Runs real ``nbgrader generate_assignment`` (solutions stripped to ``raise NotImplementedError()``,
hidden tests removed, grade cells locked and checksummed), with a throw-away gradebook so no
database lands in the repository, then normalizes the JSON (no outputs, no execution counts,
sorted keys) so that generating twice gives identical bytes.
"""
from __future__ import annotations

import argparse
import filecmp
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ftgrade.gradebook import with_venv_path

ROOT = Path(__file__).resolve().parent.parent
SOURCE, RELEASE = ROOT / "solutions", ROOT / "course"


def assignments() -> list[str]:
    return sorted(p.name for p in SOURCE.iterdir() if p.is_dir() and (p / f"{p.name}.ipynb").exists())


def normalize(path: Path) -> None:
    """Rewrite a notebook without outputs and with a stable layout."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("collapsed", "scrolled", "execution", "ExecuteTime"):
            cell["metadata"].pop(key, None)
        if isinstance(cell.get("source"), str):
            cell["source"] = cell["source"].splitlines(keepends=True)
    nb["metadata"] = {k: v for k, v in nb["metadata"].items() if k in ("kernelspec", "language_info")}
    nb["metadata"]["language_info"] = {"name": "python"}
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def generate(names: list[str], release: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            cmd = [sys.executable, "-m", "nbgrader", "generate_assignment", name, "--force", "--log-level=WARN",
                   f"--CourseDirectory.root={ROOT}",
                   f"--CourseDirectory.release_directory={release}",
                   f"--CourseDirectory.db_url=sqlite:///{tmp}/gradebook.db"]
            # nbgrader runs `alembic` by name: the venv's bin/ must be on PATH even when this
            # script is started as .venv/bin/python without activating.
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                  env=with_venv_path(dict(os.environ)))
            if proc.returncode != 0:
                sys.exit(f"nbgrader generate_assignment {name} failed:\n{proc.stdout}\n{proc.stderr}")
            for nb in sorted((release / name).glob("*.ipynb")):
                normalize(nb)


def ignore_patterns() -> list[str]:
    """The course's ``CourseDirectory.ignore`` (nbgrader_config.py): what running a notebook in
    course/ leaves there (``runs/``, checkpoints) and is never part of a release."""
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config()
    return list(config.CourseDirectory.ignore)


def differences(a: Path, b: Path, ignore: list[str] | tuple = ()) -> list[str]:
    out = []
    names = {p.name for p in a.iterdir()} | {p.name for p in b.iterdir()} if b.exists() else set()
    for name in sorted(n for n in names if not any(fnmatch.fnmatch(n, pattern) for pattern in ignore)):
        pa, pb = a / name, b / name
        if not pa.exists() or not pb.exists():
            out.append(f"{name}: only in {'generated' if pa.exists() else 'committed'}")
        elif pa.is_dir():
            out += [f"{name}/{d}" for d in differences(pa, pb, ignore)]
        elif not filecmp.cmp(pa, pb, shallow=False):
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("assignments", nargs="*", help="default: every folder of solutions/")
    parser.add_argument("--check", action="store_true", help="compare with course/ instead of writing it")
    args = parser.parse_args(argv)
    names = args.assignments or assignments()
    unknown = sorted(set(names) - set(assignments()))
    if unknown:
        parser.error(f"unknown assignments {unknown}; known: {assignments()}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.check:
        generate(names, RELEASE)
        print(f"generated {len(names)} assignment(s) in {RELEASE.relative_to(ROOT)}/")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(names, Path(tmp))
        diffs = []
        for name in names:
            if not (RELEASE / name).exists():
                diffs.append(f"{name}: not generated yet")
            else:
                diffs += [f"{name}/{d}" for d in differences(Path(tmp) / name, RELEASE / name, ignore_patterns())]
    if diffs:
        print("course/ is out of date; run `python scripts/generate_course.py`. Differences:\n  " + "\n  ".join(diffs))
        return 1
    print(f"course/ is up to date ({len(names)} assignments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
