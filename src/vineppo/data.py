"""Loading rows of a data set from a Hugging Face hub id, a local file, or a directory of files.

A source is one of:

- a local `.jsonl` / `.json` / `.parquet` file: all of its rows;
- a local directory: its data files (searched recursively) whose name starts with the split (`test.jsonl`,
  `data/test-00000-of-00001.parquet`);
- anything else: a hub id, read with `datasets.load_dataset(source, config, split=split)`.

Hub data sets go through `datasets`. Local files are read directly (JSON line by line, parquet with pyarrow, which
`datasets` installs): `datasets`' JSON reader stops at a malformed line with pyarrow's message and no line number,
while a `DataError` must name the file and the 1-based row, and it copies every local file into its cache first.

Rows are turned into problems by a `row_to_problem` function that raises `BadRow(field, why)`; `load_problems`
adds the place (file and row) to make a `DataError`, or, with `skip_bad_rows=True`, skips the row and counts it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")

T = TypeVar("T")


class DataError(ValueError):
    """A data source that cannot be read, or a malformed row; the message names the file, the row and the field."""


class BadRow(Exception):
    """Raised by a row converter: `field` is the missing or bad field, `why` what is wrong with it."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"field '{field}': {why}")
        self.field = field


@dataclass(frozen=True)
class Loaded:
    """The converted rows, in source order, and how many malformed rows were skipped."""

    items: list
    skipped: int


def _is_local(source: str) -> bool:
    path = Path(source).expanduser()
    return path.exists() or source.startswith((".", "/", "~")) or path.suffix in DATA_SUFFIXES


def data_files(source: str, split: str) -> list[Path]:
    """The local files a source names for `split` (see the module docstring)."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in DATA_SUFFIXES:
            raise DataError(f"{path}: unsupported file type '{path.suffix}' (expected one of {DATA_SUFFIXES})")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob(f"{split}*") if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise DataError(
                f"{path}: no '{split}*' data file ({', '.join(DATA_SUFFIXES)}) in this directory or below it"
            )
        return files
    raise DataError(f"{source}: no such file or directory")


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row, row) of a JSON Lines file, or of a .json file holding one array of rows."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON: {err}") from None
        yield from enumerate(rows, start=1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            yield number, BadRow("(line)", f"not valid JSON ({err.msg} at column {err.colno})")


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except Exception as err:  # (pyarrow raises several types for a damaged file)
        raise DataError(f"{path}: not a readable parquet file: {err}") from None
    yield from enumerate(table.to_pylist(), start=1)


def _hub_rows(source: str, config: str | None, split: str) -> Iterator[tuple[int, Any]]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(source, config, split=split)
    except Exception as err:  # (network, unknown id, missing split: all reported the same way)
        raise DataError(
            f"{source}: could not load split '{split}' (config {config!r}) from the Hugging Face hub: {err}"
        ) from err
    yield from enumerate(dataset, start=1)


def read_rows(source: str, split: str, hub_config: str | None = None) -> Iterator[tuple[str, int, Any]]:
    """(where, 1-based row, row) for every row of the source; `where` is the file path or the hub id."""
    if not _is_local(source):
        for number, row in _hub_rows(source, hub_config, split):
            yield f"{source} [{split}]", number, row
        return
    for path in data_files(source, split):
        rows = _parquet_rows(path) if path.suffix == ".parquet" else _json_rows(path)
        for number, row in rows:
            yield str(path), number, row


def load_problems(
    source: str,
    split: str,
    row_to_problem: Callable[[dict, str], T],
    hub_config: str | None = None,
    skip_bad_rows: bool = False,
) -> Loaded:
    """Every row of the source converted by `row_to_problem(row, row_id)`; `row_id` is `<split>/<n>`, n counting
    the rows read from the source (all its files) from 1.

    A malformed row raises `DataError` naming the file, the row and the field, or, with `skip_bad_rows`, is
    skipped, counted in `Loaded.skipped` and logged (the first few individually).
    """
    items: list[T] = []
    skipped = 0
    for position, (where, number, row) in enumerate(read_rows(source, split, hub_config), start=1):
        try:
            if isinstance(row, BadRow):
                raise row
            if not isinstance(row, dict):
                raise BadRow("(row)", f"expected a JSON object, got {type(row).__name__}")
            items.append(row_to_problem(row, f"{split}/{position}"))  # unique across the files of a directory
        except BadRow as bad:
            message = f"{where}: row {number}: {bad}"
            if not skip_bad_rows:
                raise DataError(message) from None
            skipped += 1
            if skipped <= 5:
                log.warning("skipping malformed row: %s", message)
    if skipped:
        log.warning("%s [%s]: skipped %d malformed row(s)", source, split, skipped)
    if not items:
        raise DataError(f"{source} [{split}]: no usable rows")
    return Loaded(items, skipped)


def required_text(row: dict, field: str) -> str:
    """`row[field]` as a non-empty string, else `BadRow` naming the field."""
    if field not in row or row[field] is None:
        raise BadRow(field, "missing")
    value = row[field]
    if not isinstance(value, str):
        raise BadRow(field, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise BadRow(field, "empty")
    return value
