"""Imported by the fork server of `ftlib grade`: nbgrader loaded and warmed once, before any fork."""
from ftlib.grading.autograde import prewarm

try:
    prewarm()
except Exception:  # only a speed-up: a worker that needs what failed here reports it itself
    pass
