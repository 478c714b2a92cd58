"""The kernel that `ftlib grade` runs learner notebooks in: ipykernel without its debugger.

``python -m ftgrade._kernel [--max-chars=N] -f CONNECTION_FILE`` runs
``ipykernel_launcher`` unchanged, except for two things:

- ``debugpy`` cannot be imported, so ipykernel starts without the visual debugger (it
  checks for debugpy and carries on without it). Nobody debugs a notebook while it is
  graded, and importing debugpy is about a fifth of a kernel's start-up: 0.13 s of CPU
  per submission.
- With ``--max-chars=N``, every string in the outputs the kernel sends (stream, display,
  result and error messages, and the error in an execute reply) is cut to N characters.
  The answers the judge asks for (an execute reply's ``user_expressions``) are left
  whole: they are data, which the judge limits itself. The grader keeps at most N
  characters of a cell's output anyway, but it must first
  receive and decode what the kernel sends, in memory that counts against the
  submission's limit: a ``raise ValueError("E" * 50_000_000)`` arrives three times (the
  error's text, its traceback and the reply's copy), about 380 MB in the grader for 50 MB
  of text. Learner code could undo the cut; it would only spend its own memory limit.
"""
import runpy
import sys

_OPTION = "--max-chars="
_OUTPUTS = {"stream", "display_data", "update_display_data", "execute_result", "error"}
_REPLY_ERROR = ("traceback", "evalue")  # of an execute_reply


def _cut(value, limit: int):
    """``value`` with every string in it (in lists and dicts too) cut to ``limit`` characters."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}\n... {len(value) - limit} more characters cut by ftlib grade ...\n"
    if isinstance(value, list):
        return [_cut(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: _cut(v, limit) for k, v in value.items()}
    return value


def _limit_messages(limit: int) -> None:
    from jupyter_client.session import Session

    send = Session.send

    def cut_content(msg_type, content):
        if msg_type in _OUTPUTS:
            return _cut(content, limit)
        if msg_type == "execute_reply" and isinstance(content, dict):
            return {k: _cut(v, limit) if k in _REPLY_ERROR else v for k, v in content.items()}
        return content

    def limited_send(self, stream, msg_or_type, content=None, *args, **kwargs):
        if isinstance(msg_or_type, dict):  # a message built beforehand
            msg_type = (msg_or_type.get("header") or {}).get("msg_type")
            msg_or_type = {**msg_or_type, "content": cut_content(msg_type, msg_or_type.get("content"))}
        else:
            content = cut_content(msg_or_type, content)
        return send(self, stream, msg_or_type, content, *args, **kwargs)

    Session.send = limited_send


if __name__ == "__main__":
    sys.modules["debugpy"] = None  # "import debugpy" now raises ImportError
    if len(sys.argv) > 1 and sys.argv[1].startswith(_OPTION):
        _limit_messages(int(sys.argv.pop(1)[len(_OPTION):]))
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
