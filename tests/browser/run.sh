#!/usr/bin/env bash
# Browser test of the learner's JupyterLab (issue 6): one entry point for people and CI.
#
#   bash tests/browser/run.sh            (from the repository root, after `make setup`)
#
# Installs what it needs (Debian's chromium with apt when /usr/bin/chromium is missing,
# playwright-core with `npm ci`; no browser download), starts JupyterLab on a free
# localhost port with the token off, on a temporary copy of the learner notebook and
# with Binder's start script and learner extensions (binder/), then drives it with
# learner.mjs: wrong answer -> the check's message, Validate -> failure; right answer ->
# plot, Validate -> success; then a notebook that trains: the course's own progress bars.
# Screenshots and the JupyterLab log go to tests/browser/artifacts/ (git-ignored).
# Environment: FTLIB_VENV (default .venv), BROWSER_NOTEBOOK (assignment name, default
# 01_choose_model), JUPYTER_START_TIMEOUT (s, default 180), CHROMIUM (default
# /usr/bin/chromium).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
VENV="${FTLIB_VENV:-$ROOT/.venv}"
ASSIGNMENT="${BROWSER_NOTEBOOK:-01_choose_model}"
START_TIMEOUT="${JUPYTER_START_TIMEOUT:-180}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
ART="$HERE/artifacts"
t0=$(date +%s)

say() { echo "[browser-test] $*"; }
die() { echo "[browser-test] FAIL: $*" >&2; exit 1; }

# 1. What it needs: the project's venv, Chromium, playwright-core.
[ -x "$VENV/bin/jupyter" ] || die "no JupyterLab in $VENV: run 'make setup' first"
if [ ! -x "$CHROMIUM" ]; then
    command -v apt-get >/dev/null || die "$CHROMIUM is missing and apt-get is not available"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    say "installing Debian's chromium with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
[ -x "$CHROMIUM" ] || die "$CHROMIUM still missing after apt-get install chromium"
if [ ! -f "$HERE/node_modules/playwright-core/package.json" ] \
   || [ "$HERE/package-lock.json" -nt "$HERE/node_modules/.package-lock.json" ]; then
    say "npm ci (playwright-core only; it downloads no browser)"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

# 2. The notebooks: the learner release of the first assignment, as committed, and one
#    that trains (TRAIN_NOTEBOOK, default 08_techniques) as a learner who has done its
#    exercises has it: the release with the solution cells of solutions/.
NB_REL="course/$ASSIGNMENT/$ASSIGNMENT.ipynb"
[ -f "$ROOT/$NB_REL" ] || die "no $NB_REL (generate the course first: see nbgrader_config.py)"
TRAIN_ASSIGNMENT="${TRAIN_NOTEBOOK:-08_techniques}"
TRAIN_REL="course/$TRAIN_ASSIGNMENT/$TRAIN_ASSIGNMENT.ipynb"
[ -f "$ROOT/$TRAIN_REL" ] || die "no $TRAIN_REL"
say "notebooks: $NB_REL, $TRAIN_REL (exercises done)"

# 3. A throwaway course root: a copy of the notebook's folder, nbgrader_config.py, and a
#    Jupyter config dir with binder/'s learner extensions (the project's .venv is untouched).
WORK="$(mktemp -d -t ftlib-browser.XXXXXX)"
JPID=""
cleanup() {
    if [ -n "$JPID" ] && kill -0 "$JPID" 2>/dev/null; then
        kill "$JPID" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$JPID" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$JPID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/root/course" "$WORK/config" "$WORK/data" "$WORK/runtime"
cp -r "$ROOT/course/$ASSIGNMENT" "$WORK/root/course/"
mkdir -p "$WORK/root/course/$TRAIN_ASSIGNMENT"
"$VENV/bin/python" - "$ROOT/$TRAIN_REL" "$ROOT/solutions/$TRAIN_ASSIGNMENT/$TRAIN_ASSIGNMENT.ipynb" \
    "$WORK/root/$TRAIN_REL" <<'EOF'
import json, sys
release, solution, out = sys.argv[1:]
grade_id = lambda c: c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
answers = {grade_id(c): c["source"] for c in json.load(open(solution))["cells"]
           if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
nb = json.load(open(release))
for cell in nb["cells"]:
    if grade_id(cell) in answers:
        cell["source"] = answers[grade_id(cell)]
json.dump(nb, open(out, "w"), indent=1)
EOF
[ -f "$ROOT/nbgrader_config.py" ] && cp "$ROOT/nbgrader_config.py" "$WORK/root/"
export PATH="$VENV/bin:$PATH"
export JUPYTER_CONFIG_DIR="$WORK/config"
export JUPYTER_RUNTIME_DIR="$WORK/runtime"
export JUPYTERLAB_SETTINGS_DIR="$WORK/config/lab/user-settings"
export JUPYTERLAB_WORKSPACES_DIR="$WORK/config/lab/workspaces"
export IPYTHONDIR="$WORK/ipython"
export MPLCONFIGDIR="$WORK/mpl"
# No news or update pop-ups over the screenshots.
mkdir -p "$JUPYTERLAB_SETTINGS_DIR/@jupyterlab/apputils-extension"
echo '{"fetchNews": "false", "checkForUpdates": false}' \
    >"$JUPYTERLAB_SETTINGS_DIR/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
# Every cell in the DOM (no windowing), so that outputs can be found wherever they are.
mkdir -p "$JUPYTERLAB_SETTINGS_DIR/@jupyterlab/notebook-extension"
echo '{"windowingMode": "none"}' \
    >"$JUPYTERLAB_SETTINGS_DIR/@jupyterlab/notebook-extension/tracker.jupyterlab-settings"
bash "$ROOT/binder/learner-extensions.sh" user >"$WORK/extensions.log" 2>&1 \
    || { cat "$WORK/extensions.log" >&2; die "binder/learner-extensions.sh failed"; }

# 4. JupyterLab on a free port, token and password off, through Binder's start script.
rm -rf "$ART"; mkdir -p "$ART"
PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export JUPYTER_URL="http://127.0.0.1:$PORT"
export NOTEBOOK_PATH="$NB_REL" TRAIN_NOTEBOOK_PATH="$TRAIN_REL"
# The course's small training budgets (what nbgrader runs under), so the training
# notebook takes about a minute.
export NBGRADER_EXECUTION=autograde
export ARTIFACTS="$ART"
say "starting JupyterLab on $JUPYTER_URL (log: $ART/jupyterlab.log)"
(cd "$WORK/root" && exec "$ROOT/binder/start" "$VENV/bin/jupyter" lab --no-browser \
    --ip=127.0.0.1 --port="$PORT" --port-retries=0 \
    --IdentityProvider.token= --ServerApp.password= --allow-root \
    --ServerApp.root_dir="$WORK/root" --ServerApp.open_browser=False \
    --LabApp.news_url= --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate \
    >"$ART/jupyterlab.log" 2>&1) &
JPID=$!
up=""
for _ in $(seq "$START_TIMEOUT"); do
    if ! kill -0 "$JPID" 2>/dev/null; then break; fi
    if curl -fsS -o /dev/null "$JUPYTER_URL/api/status" 2>/dev/null; then up=1; break; fi
    sleep 1
done
if [ -z "$up" ]; then
    echo "----- last lines of $ART/jupyterlab.log -----" >&2
    tail -n 40 "$ART/jupyterlab.log" >&2 || true
    die "JupyterLab did not come up on $JUPYTER_URL within ${START_TIMEOUT}s"
fi
say "JupyterLab is up after $(( $(date +%s) - t0 ))s"

# 5. The learner's session in Chromium.
status=0
(cd "$HERE" && node learner.mjs) || status=$?
say "screenshots:"; ls -1 "$ART"/*.png 2>/dev/null | sed 's/^/    /' || true
say "took $(( $(date +%s) - t0 ))s in all"
[ "$status" -eq 0 ] || die "the learner session failed (see above, $ART/ and $ART/jupyterlab.log)"
say "PASS"
