"""The parquet check: real files pass with their row count; anything else is refused before polars."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.support.parquet_files import generate
from worker_image.parquet import check_parquet
from worker_image.protocol import ErrorType, WorkerError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("parquet")
    generate(directory)
    return directory


@pytest.mark.parametrize("name", ["simple", "empty", "wide", "large", "types"])
def test_generated_parquet_passes_with_its_row_count(files: Path, name: str) -> None:
    path = files / f"{name}.parquet"
    assert check_parquet(path, "src").rows == pl.read_parquet(path).height


def refusal(path: Path) -> WorkerError:
    with pytest.raises(WorkerError) as caught:
        check_parquet(path, "http://example.test/data.parquet")
    assert caught.value.error_type is ErrorType.VALIDATION
    assert "Not a valid parquet file" in caught.value.message
    assert caught.value.details == {"url": "http://example.test/data.parquet"}
    return caught.value


def test_csv_named_parquet_is_refused(files: Path) -> None:
    assert "does not start with the parquet magic bytes" in refusal(files / "fake.parquet").message


def test_truncated_file_is_refused(files: Path) -> None:
    assert "does not end with the parquet magic bytes" in refusal(files / "truncated.parquet").message


@pytest.mark.parametrize("content", [b"", b"PAR1", b"PAR1PAR1", b"PAR1\x00\x00PAR1"], ids=len)
def test_files_too_small_to_be_parquet_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "tiny.parquet"
    path.write_bytes(content)
    assert f"only {len(content)} bytes" in refusal(path).message


def test_magic_at_both_ends_with_a_garbage_footer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.parquet"
    footer = b"not thrift at all"
    path.write_bytes(b"PAR1" + b"\x00" * 32 + footer + len(footer).to_bytes(4, "little") + b"PAR1")
    assert "footer cannot be read" in refusal(path).message


def test_footer_length_pointing_outside_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lying.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 8 + (10**6).to_bytes(4, "little") + b"PAR1")
    assert "its footer claims 1000000 bytes, more than the file holds" in refusal(path).message


def test_more_columns_than_the_cap_are_refused(files: Path) -> None:
    path = files / "wide.parquet"  # 100 columns
    assert check_parquet(path, "src", max_columns=100).rows == 5
    with pytest.raises(WorkerError) as caught:
        check_parquet(path, "src", max_columns=99)
    assert caught.value.error_type is ErrorType.VALIDATION
    assert caught.value.message == "Not a valid parquet file: src: it has 100 columns, above the limit of 99"


def test_a_footer_over_the_cap_is_refused_before_it_is_parsed(files: Path) -> None:
    path = files / "wide.parquet"
    footer = int.from_bytes(path.read_bytes()[-8:-4], "little")
    assert check_parquet(path, "src", max_footer_bytes=footer).rows == 5
    with pytest.raises(WorkerError) as caught:
        check_parquet(path, "src", max_footer_bytes=footer - 1)
    assert f"its footer is {footer} bytes, above the limit of {footer - 1}" in caught.value.message
