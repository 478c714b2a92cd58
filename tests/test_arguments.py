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


@pytest.mark.parametrize("options, message", [
    ({"task": "image", "model": "tiny-cnn", "image_size": 50},
     r"^image_size must be a multiple of 32 \(64, 96, 224\.\.\.\); got 50\.$"),
    ({"model": "tiny-llama", "technique": "gradual"},
     r"^technique must be one of \['lora', 'full', 'dpo', 'simpo'\]; got 'gradual'\.$"),
    ({"data": "no-such-file.csv"}, r"^data must be an existing file or folder; got 'no-such-file.csv'\.$"),
])
def test_finetune_errors_name_the_python_argument_not_a_flag(options, message):
    from ftlib.pipeline import finetune

    with pytest.raises(ArgumentError, match=message):
        finetune(progress=False, log=lambda *_: None, **options)


@pytest.mark.parametrize("options, message", [
    ({"train_sizes": [0]}, r"^train_sizes must be positive; got \[0\]\.$"),
    ({"seeds": []}, r"^seeds must be a non-empty list of integers; got \[\]\.$"),
    ({"techniques": ["full", "full"]}, r"^techniques must name each technique once; got \['full', 'full'\]\.$"),
    ({"task": "audio"}, r"^task must be one of \['image', 'text'\]; got 'audio'\.$"),
])
def test_compare_errors_name_the_python_argument_not_a_flag(options, message):
    from ftlib.compare import CompareConfig

    with pytest.raises(ArgumentError, match=message):
        CompareConfig(**options).resolved()
