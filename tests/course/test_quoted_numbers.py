"""Numbers quoted in a notebook's text must come from somewhere that can be checked.

Every measurement-like number in a markdown cell of a solution notebook (a decimal with two or
more digits after the point, or an integer with thousands separators) is declared in that
cell's metadata, ``{"ftlib": {"quotes": {"0.761": SOURCE}}}``, where SOURCE is

* ``"printed"``: the notebook's own cells print it (checked on an executed run, slow);
* ``"code"``: it is a setting written in one of the notebook's code cells;
* a file of the repository (``"bench/RESULTS.md"``, ``"ftlib/techniques/lpft.py"``) or of the shared docs
  next to it: the number appears there (the measurement it reports);
* ``"literature: ..."`` or ``"example: ..."``: a published figure or an illustrative value,
  said so in the metadata.

An undeclared number fails, and so does a declared one that its source does not contain: the
text cannot drift from the code, the recorded measurements or the runs without a test saying so.
"""
import json
import re
from pathlib import Path

import pytest

from course_notebooks import ROOT, assignments, errors, executed_solution, solution_notebook

NUMBER = re.compile(r"(?<![\w.,])(\d+\.\d{2,}|\d{1,3}(?:,\d{3})+)(?![\w]|[.,]\d)")
FREE_TEXT = ("literature:", "example:")
NAMES = assignments()
# Executing 09 once more would add ~3 min to the suite, so its "printed" figures are
# declared and checked against their sources here, but not against an executed run.
EXECUTED = [n for n in NAMES if n[:2] <= "08"]


def quoted_numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def _plain(number: str) -> str:
    return number.replace(",", "")


def _contains(haystack: str, number: str) -> bool:
    """The number as a whole token, with or without its thousands separators."""
    for form in {number, _plain(number)}:
        if re.search(rf"(?<![\d.]){re.escape(form)}(?!\d)", haystack):
            return True
    return False


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def quote_problems(cells: list[dict], root: Path = ROOT, outputs: str | None = None) -> list[str]:
    """What is wrong with the quoted numbers of a notebook's cells.

    ``outputs`` is the text the executed notebook printed; without it, ``"printed"`` quotes
    are only checked for being declared.
    """
    code = "\n".join(_source(c) for c in cells if c["cell_type"] == "code")
    problems = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        text = _source(cell)
        quotes = cell.get("metadata", {}).get("ftlib", {}).get("quotes", {})
        where = f"markdown cell {i} ({cell.get('id', '?')})"
        for number in quoted_numbers(text):
            if number not in quotes:
                problems.append(f"{where}: {number} is quoted but not declared in metadata ftlib.quotes")
        for number, source in quotes.items():
            if not _contains(text, number):
                problems.append(f"{where}: declares {number}, which its text no longer quotes")
            elif source == "printed":
                if outputs is not None and not _contains(outputs, number):
                    problems.append(f"{where}: quotes {number} as printed, but no cell printed it")
            elif source == "code":
                if not _contains(code, number):
                    problems.append(f"{where}: quotes {number} as a setting, but no code cell sets it")
            elif source.startswith(FREE_TEXT):
                if not source.split(":", 1)[1].strip():
                    problems.append(f"{where}: {number}: say which publication or what it illustrates")
            else:
                path = (root / source).resolve()
                if not path.is_file():
                    if not source.startswith("../"):
                        problems.append(f"{where}: {number}: source {source} does not exist")
                    continue  # the shared docs are not part of every checkout
                if not _contains(path.read_text(encoding="utf-8"), number):
                    problems.append(f"{where}: quotes {number} from {source}, which does not contain it")
    return problems


def printed_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("name", NAMES)
def test_every_quoted_number_is_declared_and_its_source_holds_it(name):
    assert quote_problems(_cells(solution_notebook(name))) == []


def test_the_check_catches_an_undeclared_a_wrong_and_an_unprinted_number():
    cells = [
        {"cell_type": "markdown", "id": "a", "source": "Accuracy 0.761 on 2,000 reviews.",
         "metadata": {"ftlib": {"quotes": {"0.761": "bench/RESULTS.md"}}}},
        {"cell_type": "markdown", "id": "b", "source": "The results say 0.123456 somewhere.",
         "metadata": {"ftlib": {"quotes": {"0.123456": "bench/RESULTS.md"}}}},
        {"cell_type": "markdown", "id": "c", "source": "The cell prints 12,808 and 0.58.",
         "metadata": {"ftlib": {"quotes": {"12,808": "printed", "0.58": "printed"}}}},
        {"cell_type": "code", "id": "d", "source": "print(12808)", "metadata": {}, "outputs": []},
    ]
    problems = quote_problems(cells, outputs="12808 snippets\n")
    assert len(problems) == 3, problems
    assert "2,000 is quoted but not declared" in problems[0]
    assert "0.123456 from bench/RESULTS.md, which does not contain it" in problems[1]
    assert "0.58 as printed, but no cell printed it" in problems[2]
    # 12,808 printed as 12808 counts; so does a number in another notation of the same digits.
    assert not any("12,808" in p for p in problems)


def test_numbers_inside_longer_numbers_do_not_count():
    assert quoted_numbers("0.7975 and 1,409 MB, 10.5 s, 2e-3, v0.19.0, 0.01") == ["0.7975", "1,409", "0.01"]
    assert not _contains("0.7613", "0.761") and _contains("acc 0.761.", "0.761")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in EXECUTED if any(
    source == "printed" for cell in _cells(solution_notebook(n))
    for source in cell.get("metadata", {}).get("ftlib", {}).get("quotes", {}).values())])
def test_numbers_quoted_as_printed_are_printed(name):
    nb, _, _ = executed_solution(name, timeout=900)  # the run test_notebooks executed, if it ran
    assert not errors(nb)
    assert quote_problems(_cells(solution_notebook(name)), outputs=printed_text(nb)) == []
