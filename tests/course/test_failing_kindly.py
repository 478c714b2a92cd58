"""A failed check in Jupyter shows its message and the learner's lines, not 30 lines of ftlib."""
import nbclient
import nbformat

WRONG = """from ftlib.checks import choose_model as checks

def count_parameters(model):
    total = sum(p.numel() for p in model.parameters())
    return total, total  # frozen parameters counted as trainable
"""
CRASHES = """def count_parameters(model):
    sizes = [p.numel() for p in model.parameters()]
    return sizes.total, sum(sizes)
"""
CHECK = "checks.check_count_parameters(count_parameters)"


def _errors(*sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbclient.NotebookClient(nb, timeout=120, allow_errors=True, kernel_name="python3").execute()
    return [o for cell in nb.cells for o in cell.get("outputs", []) if o["output_type"] == "error"]


def test_a_wrong_answer_shows_the_message_in_a_few_lines():
    wrong, crash = _errors(WRONG, CHECK, CRASHES, CHECK)
    for error in (wrong, crash):
        assert error["ename"] == "CheckFailure"  # still an error: nbgrader gives the cell no points
        text = "\n".join(error["traceback"])
        assert len(text.splitlines()) <= 10, text
        assert "ftlib/checks" not in text and "site-packages" not in text, text
        assert f"checked by:   Cell In[" in text and CHECK in text, text
    wrong_text = "\n".join(wrong["traceback"])
    assert "Wrong trainable count" in wrong_text and "expected: " in wrong_text and "found: " in wrong_text
    assert "hint: " in wrong_text
    # A crash inside the learner's function names the input and points at their line.
    crash_text = "\n".join(crash["traceback"])
    assert "count_parameters(<" in crash_text and "model>) raised AttributeError" in crash_text, crash_text
    assert "in your code: Cell In[" in crash_text and "return sizes.total, sum(sizes)" in crash_text, crash_text
    assert "scratch cell" in crash_text


def test_a_crash_on_batches_says_what_they_hold():
    """A learner whose loop crashes on the check's batches can build the same in a scratch cell."""
    import pytest

    from ftlib.checks import BNNet
    from ftlib.checks._common import CheckFailure, call, tiny_image_loader

    def train_one_epoch(model, loader):
        for batch in loader:
            model(batch["images"])  # the key is "pixel_values"

    with pytest.raises(CheckFailure) as failure:
        call(train_one_epoch, BNNet(), tiny_image_loader(), name="train_one_epoch")
    message = str(failure.value)
    assert "train_one_epoch(<BNNet model>, <4 batches like {pixel_values: <tensor of shape (8, 3, 8, 8)>, " \
           "labels: <tensor of shape (8,)>}>) raised KeyError: 'images'" in message, message
    assert "scratch cell" in message and "from ftlib.checks import BNNet" in message, message


def test_every_exercise_has_a_scratch_cell_below_it():
    from course_notebooks import assignments, solution_notebook

    missing = []
    for name in assignments():
        cells = nbformat.read(str(solution_notebook(name)), as_version=4).cells
        for cell, below in zip(cells, cells[1:] + [None]):
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type == "code" and meta.get("solution"):
                if below is None or below.cell_type != "code" or below.metadata.get("nbgrader") \
                        or not below.source.startswith("# Scratch cell"):
                    missing.append(f"{name}: {meta['grade_id']}")
    assert missing == []
