import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.quantity import QuantityError, parse_cpu_millicores, parse_memory_bytes

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "millicores"),
    [("500m", 500), ("1", 1000), ("1.5", 1500), ("2", 2000), ("0.1", 100), ("100m", 100), (" 250m ", 250)],
)
def test_cpu_quantities(text: str, millicores: int) -> None:
    assert parse_cpu_millicores(text) == millicores


@pytest.mark.parametrize("text", ["", "abc", "0", "0m", "-1", "1.5m", "0.0001", "1Gi", "1e3", "m"])
def test_cpu_refused(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_cpu_millicores(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("256M", 256 * 10**6),
        ("1000000", 10**6),
        ("1e9", 10**9),
        ("64Ki", 64 * 1024),
        ("2k", 2000),
    ],
)
def test_memory_quantities(text: str, size: int) -> None:
    assert parse_memory_bytes(text) == size


@pytest.mark.parametrize("text", ["", "1 Gi", "1GB", "-1Mi", "0", "1.5", "Mi", "1Xi", "0.5Ki1"])
def test_memory_refused(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_memory_bytes(text)


@given(st.integers(min_value=1, max_value=2**40), st.sampled_from(["", "Ki", "Mi", "Gi", "k", "M", "G"]))
def test_memory_integer_with_suffix_round_trips(number: int, suffix: str) -> None:
    factor = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}[suffix]
    assert parse_memory_bytes(f"{number}{suffix}") == number * factor


@given(st.text(max_size=12))
def test_arbitrary_text_parses_or_raises_quantity_error(text: str) -> None:
    for parse in (parse_cpu_millicores, parse_memory_bytes):
        with contextlib.suppress(QuantityError):
            assert parse(text) > 0
