"""Per-student HTML feedback for `ftlib grade`: scores, messages, the learner's own code.

Unlike nbgrader's feedback, which renders the autograded notebook with the hidden tests
put back, this page removes every hidden-test region and, for a grade cell that had
hidden tests, shows only the final ``ExceptionName: message`` line of an error, because
an IPython traceback quotes the failing source line. ``include_hidden=True`` keeps them.
The regions are found by nbgrader's own `ClearHiddenTests`, with the course's
delimiters (`hidden_delimiters`), so feedback hides exactly what the release hid.
Self-contained HTML, no template engine, everything escaped.
"""
from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["render_feedback", "error_summary", "hidden_delimiters", "clear_hidden_tests"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MAX_CHARS = 5000

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.fail{color:#b00020}.pass{color:#1b5e20}.out{background:#fff;border-left:3px solid #ccc}
.err{background:#fff3f3;border-left:3px solid #b00020}
"""


def error_summary(outputs: list[dict[str, Any]]) -> str:
    """Return ``"Name: message"`` of the first error output, or ``""`` if there is none."""
    for out in outputs:
        if out.get("output_type") == "error":
            name, value = out.get("ename", "Error"), str(out.get("evalue", "")).strip()
            return _ANSI.sub("", f"{name}: {value}" if value else name)
    return ""


def hidden_delimiters(config=None) -> tuple[str, str]:
    """The (begin, end) hidden-test delimiters of nbgrader's `ClearHiddenTests` under ``config``."""
    from nbgrader.preprocessors import ClearHiddenTests

    pre = ClearHiddenTests(config=config) if config is not None else ClearHiddenTests()
    return pre.begin_test_delimeter, pre.end_test_delimeter


def clear_hidden_tests(source: str, delimiters: tuple[str, str] | None = None) -> tuple[str, bool]:
    """Return ``source`` without its hidden-test regions, and whether it had any.

    nbgrader's `ClearHiddenTests` does the work. A region it refuses (nested, or with no
    end) is removed from its first line to the end of the cell: never shown.
    """
    from nbformat.v4 import new_code_cell
    from nbgrader.preprocessors import ClearHiddenTests

    begin, end = delimiters or hidden_delimiters()
    if begin not in source:
        return source, False
    pre = ClearHiddenTests(begin_test_delimeter=begin, end_test_delimeter=end, enforce_metadata=False)
    try:
        cell, _ = pre.preprocess_cell(new_code_cell(source), {}, 0)
        return cell.source, True
    except RuntimeError:
        lines = source.split("\n")
        first = next(i for i, line in enumerate(lines) if begin in line)
        return "\n".join(lines[:first]), True


def _text(out: dict[str, Any]) -> str:
    if out.get("output_type") == "stream":
        text = out.get("text", "")
    elif out.get("output_type") in ("execute_result", "display_data"):
        text = out.get("data", {}).get("text/plain", "")
    else:
        return ""
    text = "".join(text) if isinstance(text, list) else str(text)
    return text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS] + "\n... output truncated ..."


def render_feedback(nb: dict[str, Any], grades: list[dict[str, Any]], *, student: str, assignment: str,
                    notebook: str, status: str, include_hidden: bool = False,
                    hidden_delimiters: tuple[str, str] | None = None, notes: list[str] = ()) -> str:
    """Render the feedback page of one graded notebook.

    Parameters
    ----------
    nb : dict
        The autograded notebook (JSON), hidden tests included.
    grades : list of dict
        One per grade cell: ``grade_id``, ``score``, ``max_score``, ``message``.
    student, assignment, notebook, status : str
        Shown in the header.
    include_hidden : bool
        Show hidden tests and full tracebacks (for the instructor).
    hidden_delimiters : (str, str), optional
        The course's ``ClearHiddenTests`` begin and end delimiters (default: nbgrader's).
    notes : list of str
        Remarks on the whole submission (files not used, a flag for the instructor).

    Returns
    -------
    str
        A complete HTML document.
    """
    esc = html.escape
    got = sum(g["score"] or 0 for g in grades)
    total = sum(g["max_score"] for g in grades)
    by_hand = sum(g["max_score"] for g in grades if g["score"] is None)
    pending = f" ({by_hand:g} of them to be graded by your instructor)" if by_hand else ""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(assignment)}/{esc(notebook)}"
             f" - {esc(student)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{esc(assignment)} / {esc(notebook)}</h1>",
             f"<p>Student: <b>{esc(student)}</b>. Score: <b>{got:g} / {total:g}</b>{pending}. Status: <b>{esc(status)}</b>.</p>",
             *[f"<p class='note'>Note: {esc(n)}</p>" for n in notes],
             "<table><tr><th>test</th><th>points</th><th>result</th><th>message</th></tr>"]
    for g in grades:
        if g["score"] is None:  # a written answer, graded by a person in nbgrader's formgrader
            score, cls, result = "?", "", "graded by hand"
        else:
            score = f"{g['score']:g}"
            cls = result = "pass" if g["score"] >= g["max_score"] else "fail"
        parts.append(f"<tr><td><a href='#{esc(g['grade_id'])}'>{esc(g['grade_id'])}</a></td>"
                     f"<td>{score} / {g['max_score']:g}</td><td class='{cls}'>{result}</td>"
                     f"<td>{esc(g.get('message') or '')}</td></tr>")
    parts.append("</table><h2>Your notebook, as graded</h2>")
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {}).get("nbgrader", {}) or {}
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        stripped, had_hidden = clear_hidden_tests(source, hidden_delimiters)
        if had_hidden and not include_hidden:
            source = stripped.rstrip("\n") + "\n# (hidden tests)\n"
        anchor = f" id='{esc(meta['grade_id'])}'" if meta.get("grade_id") else ""
        parts.append(f"<pre{anchor}>{esc(source)}</pre>")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                if had_hidden and not include_hidden:
                    text = error_summary([out])
                else:
                    text = _ANSI.sub("", "\n".join(out.get("traceback", [])) or error_summary([out]))
                parts.append(f"<pre class='err'>{esc(text[-_MAX_CHARS:])}</pre>")
            else:
                text = _text(out)
                if text:
                    parts.append(f"<pre class='out'>{esc(text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
