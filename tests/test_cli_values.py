"""The one size parser and the one dtype parser the command-line tools share."""

import pytest
import torch

from hf_qwen3_deepstack.cli_values import format_size, parse_dtype, parse_size


@pytest.mark.parametrize("text,size", [("5GB", 5 * 10**9), ("2GiB", 2 * 2**30), ("500KB", 500_000), ("40M", 40 * 10**6),
                                       ("1.5GB", 1_500_000_000), (" 5 gb ", 5 * 10**9), ("4096", 4096), (7, 7)])
def test_sizes_in_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["5I", "lots", "0", "-1", "5XB", True])
def test_bad_sizes_say_what_is_accepted(text):
    with pytest.raises(ValueError, match="invalid size|must be positive"):
        parse_size(text)


def test_dtypes_and_aliases():
    assert parse_dtype("auto") is None and parse_dtype(None) is None
    assert parse_dtype("bf16") == parse_dtype("torch.bfloat16") == torch.bfloat16
    assert parse_dtype(torch.float16) == parse_dtype("half") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'int8'; use one of auto, float32, bfloat16, float16"):
        parse_dtype("int8")


def test_sizes_print_in_decimal_units():
    assert [format_size(n) for n in (812, 1_500_000, 61_070_000_000)] == ["812 B", "1.50 MB", "61.07 GB"]
