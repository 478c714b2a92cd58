"""The grading kernel (`ftgrade._kernel`): what it sends is cut, what the judge asks for is not."""
from __future__ import annotations

import sys

import pytest
from jupyter_client.manager import KernelManager

from ftgrade.autograde import _grading_kernel

LIMIT = 1000


class GradingKernelManager(KernelManager):
    def format_kernel_cmd(self, extra_arguments=None):
        return _grading_kernel(super().format_kernel_cmd(extra_arguments), LIMIT)


@pytest.fixture(scope="module")
def kernel():
    km = GradingKernelManager(kernel_name="python3")
    km.kernel_spec.argv[0] = sys.executable
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _run(kc, code: str, **kwargs) -> tuple[dict, list[dict]]:
    """Execute ``code``; the execute reply's content and the iopub messages it caused."""
    msg_id = kc.execute(code, **kwargs)
    reply = kc.get_shell_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == msg_id
    outputs = []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return reply["content"], outputs
        if msg["msg_type"] != "status":
            outputs.append(msg)


def test_the_command_runs_the_grading_kernel_with_the_cut():
    cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert _grading_kernel(cmd, 5) == [sys.executable, "-m", "ftgrade._kernel", "--max-chars=5", "-f",
                                       "{connection_file}"]
    assert _grading_kernel(cmd) == [sys.executable, "-m", "ftgrade._kernel", "-f", "{connection_file}"]
    assert _grading_kernel(["other-kernel", "{connection_file}"], 5) == ["other-kernel", "{connection_file}"]


def test_printed_and_displayed_text_is_cut(kernel):
    _, outputs = _run(kernel, 'print("P" * 5000)\ndisplay({"text/plain": "D" * 5000}, raw=True)\n"R" * 5000')
    kinds = {m["msg_type"]: m["content"] for m in outputs}
    assert kinds["stream"]["text"].startswith("P" * LIMIT + "\n... "), kinds["stream"]["text"][-80:]
    assert "cut by ftlib grade" in kinds["stream"]["text"] and len(kinds["stream"]["text"]) < LIMIT + 100
    for kind in ("display_data", "execute_result"):
        text = kinds[kind]["data"]["text/plain"]
        assert len(text) < LIMIT + 100 and "cut by ftlib grade" in text, (kind, len(text))


def test_an_error_is_cut_in_the_output_and_in_the_reply(kernel):
    reply, outputs = _run(kernel, 'raise ValueError("E" * 5000)')
    error = next(m["content"] for m in outputs if m["msg_type"] == "error")
    for content in (error, reply):
        assert content["ename"] == "ValueError"
        assert content["evalue"].startswith("E" * LIMIT) and len(content["evalue"]) < LIMIT + 100
        assert max(map(len, content["traceback"])) < LIMIT + 100


def test_the_answer_the_judge_asks_for_is_whole(kernel):
    reply, _ = _run(kernel, "", user_expressions={"r": '"A" * 5000'})
    assert reply["user_expressions"]["r"]["data"]["text/plain"] == repr("A" * 5000)


def test_a_timed_out_cell_is_interrupted_once(tmp_path, monkeypatch):
    """nbclient interrupts a cell that timed out; a second interrupt from the grader could land in
    ipykernel's own code while it still sends the cell's output ("KeyboardInterrupt caught in
    kernel"), after which the kernel answers nothing and every later cell scores zero."""
    from nbformat.v4 import new_code_cell, new_notebook

    from ftgrade.autograde import GradingExecute, SandboxKernelManager

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    interrupts = []

    class CountingKernelManager(SandboxKernelManager):
        async def interrupt_kernel(self):
            interrupts.append(True)
            return await super().interrupt_kernel()

    nb = new_notebook(cells=[new_code_cell("while True: pass"), new_code_cell("print('after')")])
    nb, _ = GradingExecute(timeout=2, kernel_manager_class=CountingKernelManager).preprocess(
        nb, {"nbgrader": {"notebook": "timeout"}})
    assert [o.get("ename") for o in nb.cells[0].outputs] == ["KeyboardInterrupt", "CellTimeoutError"]
    assert [o.get("text") for o in nb.cells[1].outputs] == ["after\n"]
    assert len(interrupts) == 1, f"{len(interrupts)} interrupts"
