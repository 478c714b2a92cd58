"""The kernel that `ftlib grade` runs learner notebooks in: ipykernel without its debugger.

``python -m ftgrade._kernel -f CONNECTION_FILE`` runs ``ipykernel_launcher``
unchanged, except that ``debugpy`` cannot be imported, so ipykernel starts without the
visual debugger (it checks for debugpy and carries on without it). Nobody debugs a
notebook while it is graded, and importing debugpy is about a fifth of a kernel's
start-up: 0.13 s of CPU per submission.
"""
import runpy
import sys

if __name__ == "__main__":
    sys.modules["debugpy"] = None  # "import debugpy" now raises ImportError
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
