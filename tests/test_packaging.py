"""What an installed ftlib promises: its metadata, its extras, and a command line that starts fast."""
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(key: str) -> dict[str, Requirement]:
    reqs = PROJECT["dependencies"] if key == "library" else PROJECT["optional-dependencies"][key]
    return {r.name.lower(): r for r in map(Requirement, reqs) if r.name != "ftlib"}


def test_the_pinned_course_environment_satisfies_every_range_of_the_library_and_its_extras():
    pinned = _requirements("pinned")
    assert str(pinned["torch"].specifier) == "==2.13.0", "the CPU build on this machine's disk; never looser"
    ranged = {}
    for key in ("library", "course", "grading", "test"):
        ranged.update(_requirements(key))
    assert set(pinned) == set(ranged), "pinned must pin exactly what the library and its extras require"
    for name, req in ranged.items():
        version = next(iter(pinned[name].specifier)).version
        assert req.specifier.contains(version), f"{name}: the pinned {version} is outside {req.specifier}"


def test_the_library_alone_needs_neither_jupyter_nor_nbgrader_nor_dask():
    assert not {"jupyterlab", "nbgrader", "dask", "distributed", "pytest"} & set(_requirements("library"))


def test_licence_in_pep_639_form():
    assert PROJECT["license"] == "MIT"
    assert all((ROOT / f).is_file() for f in PROJECT["license-files"])


def test_ftlib_help_as_a_command_does_not_import_torch():
    # -X importtime lists every module the command imports, on stderr.
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ftlib", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "finetune" in r.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "ftlib.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "transformers", "nbgrader")}, \
        "ftlib --help must not import torch, transformers or nbgrader"
