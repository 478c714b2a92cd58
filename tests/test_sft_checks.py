"""The checks of notebook 09 (ftlib.checks.llm_finetuning): pass on ftlib.sft, fail on stubs and wrong answers."""
import sys
from pathlib import Path

import pytest

from ftlib import sft
from ftlib.checks import CheckFailure
from ftlib.checks import llm_finetuning as checks

sys.path.insert(0, str(Path(__file__).parent / "course"))
from wrong_answers import WRONG_LLM  # noqa: E402

EXERCISES = ["build_sft_example", "collate_sft", "causal_lm_loss", "score_choices", "greedy_generate"]


def _stub(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("exercise", EXERCISES)
def test_check_passes_on_the_reference(exercise):
    check = getattr(checks, f"check_{exercise}")
    check(getattr(sft, exercise))
    check(getattr(sft, exercise), thorough=True)


@pytest.mark.parametrize("exercise", EXERCISES)
def test_check_fails_on_the_release_stub(exercise):
    with pytest.raises(CheckFailure, match="not implemented yet"):
        getattr(checks, f"check_{exercise}")(_stub)


CASES = [(e, d, fn) for e in EXERCISES for d, fn in WRONG_LLM[e]]


@pytest.mark.parametrize("exercise,description,wrong", CASES, ids=[f"{e}-{d.replace(' ', '_')}" for e, d, _ in CASES])
def test_check_rejects_the_mistakes_people_make(exercise, description, wrong):
    with pytest.raises(CheckFailure) as info:
        getattr(checks, f"check_{exercise}")(wrong)
    assert "hint" in str(info.value) or "expected" in str(info.value), str(info.value)
