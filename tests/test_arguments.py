"""ftlib.arguments: one message template for bad arguments, the Python name in the API."""
import math

import pytest

from ftlib.arguments import ArgumentError, integer, number, one_of


@pytest.mark.parametrize("value", [0, -3, 1.0, True, "2", None])
def test_integer_refuses_what_is_not_a_positive_int(value):
    with pytest.raises(ArgumentError) as info:
        integer(value, "batch_size")
    assert str(info.value) == f"batch_size must be a positive integer; got {value!r}."
    assert info.value.as_flag() == f"--batch-size must be a positive integer; got {value!r}."


def test_integer_minimum_and_meaning():
    assert integer(2, "num_classes", minimum=2) == 2
    with pytest.raises(ValueError, match=r"^num_crops must be an integer >= 0 \(crops per photo\); got -1\.$"):
        integer(-1, "num_crops", minimum=0, meaning="crops per photo")


@pytest.mark.parametrize("value", [0, -1e-3, math.nan, math.inf, True, "1e-3"])
def test_number_refuses_non_positive_non_finite_and_non_numbers(value):
    with pytest.raises(ArgumentError, match=r"^lr must be a number > 0; got "):
        number(value, "lr")


def test_number_inclusive_and_one_of():
    assert number(0, "alpha", inclusive=True) == 0
    with pytest.raises(ArgumentError, match=r"^alpha must be a number >= 0; got -0\.5\.$"):
        number(-0.5, "alpha", inclusive=True)
    assert one_of("bf16", "precision", ["fp32", "bf16"]) == "bf16"
    with pytest.raises(ArgumentError, match=r"^precision must be one of \['fp32', 'bf16'\]; got 'half'\.$"):
        one_of("half", "precision", ["fp32", "bf16"])
