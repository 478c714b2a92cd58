#!/usr/bin/env bash
# The nbgrader pieces a learner needs, and nothing more: the Validate button in the
# notebook toolbar (labextension validate-assignment + server extension
# validate_assignment) stays on; the instructor's formgrader and create-assignment and
# the exchange-based assignment and course lists go off (nbgrader 0.9 docs,
# user_guide/installation.rst, "Disabling extensions"), and so does the "Nbgrader" main
# menu (plugin @jupyter/nbgrader:menu), which only opens those instructor tools.
#
#   learner-extensions.sh sys_prefix   (default; binder/postBuild) the documented
#       `jupyter labextension disable --level=sys_prefix` and
#       `jupyter server extension disable --sys-prefix` in the active environment.
#   learner-extensions.sh user         (the browser test) the same settings written into
#       $JUPYTER_CONFIG_DIR, so that a shared environment is left alone. Written
#       directly: `jupyter server extension disable --user` only toggles extensions that
#       the user-level config already lists, and nbgrader's are enabled in the
#       environment's conf.d, so it prints "Validation failed" and changes nothing
#       (exit status 0). Same result as the CLI's, and seconds faster.
set -euo pipefail
LAB_OFF="@jupyter/nbgrader:menu @jupyter/nbgrader:formgrader @jupyter/nbgrader:assignment-list @jupyter/nbgrader:course-list @jupyter/nbgrader:create-assignment"
SERVER_OFF="nbgrader.server_extensions.formgrader nbgrader.server_extensions.assignment_list nbgrader.server_extensions.course_list"
case "${1:-sys_prefix}" in
    sys_prefix)
        # shellcheck disable=SC2086
        jupyter labextension disable --level=sys_prefix $LAB_OFF
        # shellcheck disable=SC2086
        jupyter server extension disable --sys-prefix $SERVER_OFF
        ;;
    user)
        : "${JUPYTER_CONFIG_DIR:?set JUPYTER_CONFIG_DIR (a throwaway config dir) for the user level}"
        LAB_OFF="$LAB_OFF" SERVER_OFF="$SERVER_OFF" python - <<'PY'
import json, os
from pathlib import Path

def merge(path, update):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    for key, value in update.items():
        data.setdefault(key, {}).update(value)
    path.write_text(json.dumps(data, indent=2) + "\n")

conf = Path(os.environ["JUPYTER_CONFIG_DIR"])
merge(conf / "labconfig" / "page_config.json",
      {"disabledExtensions": {name: True for name in os.environ["LAB_OFF"].split()}})
merge(conf / "jupyter_server_config.json",
      {"ServerApp": {"jpserver_extensions": {name: False for name in os.environ["SERVER_OFF"].split()}}})
print(f"learner extensions written to {conf}")
PY
        ;;
    *) echo "usage: $0 [sys_prefix|user]" >&2; exit 2 ;;
esac
