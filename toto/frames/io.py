"""Data files for the commands: CSV or Parquet in, CSV or Parquet out, written atomically.

Reading goes through pandas; a :class:`DataFile` remembers where each row came from, so that
a :class:`toto.frames.CellError` (which names a frame's index label) reads ``FILE, line N,
column 'x'`` (CSV) or ``FILE, row N, column 'x'`` (Parquet). Outputs go to temporary files
beside their destinations and are moved into place together once complete (:class:`StagedOutputs`).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import UserError, one_line
from .panel import CellError, require_pandas

INPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SUPPORTED = ".csv, .parquet, .pq"
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
RAGGED_ROW = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")  # pandas' C parser


class DataFileError(UserError):
    """A bad data file or output path: one error line on stderr, exit code 2."""


def input_format(path: Path) -> str:
    """``"csv"`` or ``"parquet"`` from the file's suffix; any other suffix is an error naming the file."""
    fmt = INPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataFileError(f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; use one of {SUPPORTED}")
    return fmt


def output_format(path: Path) -> str:
    """``"parquet"`` for a ``.parquet`` or ``.pq`` path, else ``"csv"``."""
    return "parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "csv"


@dataclass(frozen=True)
class DataFile:
    """A frame read from ``path``; its index labels are the data rows' positions in the file."""

    path: Path
    format: str  # "csv" or "parquet"
    frame: Any  # pandas DataFrame
    header_newlines: int = 0  # line breaks inside quoted header names (CSV)

    def where(self, row: Any, column: str) -> str:
        """``FILE, line N, column 'x'`` (CSV) or ``FILE, row N (index N-1), column 'x'`` (Parquet; rows counted from 1)."""
        if self.format == "csv":
            return f"{self.path}, line {self.line(row)}, column {column!r}"
        return f"{self.path}, row {int(row) + 1} (index {int(row)}), column {column!r}"

    def line(self, row: int) -> int:
        """The line of the file on which data row ``row`` (a label of the frame as read) starts.

        Rows were read with ``skip_blank_lines=False`` and fully empty ones dropped afterwards,
        so label ``k`` is the ``k``-th record after the header: line ``k + 2``, plus any line
        breaks inside quoted cells of the header and of the records before it.
        """
        before = self.frame[self.frame.index < row]
        breaks = 0
        for name in before.columns:
            column = before[name]
            if column.dtype == object:
                breaks += sum(cell.count("\n") for cell in column if isinstance(cell, str))
        return int(row) + 2 + self.header_newlines + breaks

    def columns(self) -> list[str]:
        return [str(name) for name in self.frame.columns]


def read_data_file(
    path: Path, *, text_columns: Sequence[str] = (), fmt: str | None = None, keep_empty_rows: bool = False
) -> DataFile:
    """Read a CSV or Parquet file (``fmt``, by default by suffix) into a :class:`DataFile`.

    In CSV, ``text_columns`` (such as the item id) are read as text, so ``007`` stays ``007``;
    the cells pandas reads as missing (empty, ``NA``, ``n/a``, ``null``, ``nan``, ...) are NaN.
    Blank lines are skipped; so are rows of empty cells (``,,``) unless ``keep_empty_rows``
    (a wide table's time step where every value is missing).
    A missing file, an unreadable one or a parse failure is a :class:`DataFileError` naming the file.
    """
    fmt = fmt or input_format(path)
    if not path.is_file():
        raise DataFileError(f"{path}: cannot read ({'is a folder' if path.is_dir() else 'no such file'})")
    if fmt == "csv":
        return _read_csv(path, text_columns, keep_empty_rows)
    return _read_parquet(path)


def pandas_module() -> Any:
    """pandas, or a :class:`DataFileError` naming the extra that installs it."""
    try:
        return require_pandas()
    except ImportError as err:
        raise DataFileError(str(err)) from None


def _read_csv(path: Path, text_columns: Sequence[str], keep_empty_rows: bool) -> DataFile:
    pd = pandas_module()
    try:
        with warnings.catch_warnings():
            # A first row longer than the header: pandas would take its first column for an index.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path,
                dtype={name: str for name in text_columns},
                skip_blank_lines=False,  # keep blank lines as empty rows: row labels stay record numbers
                index_col=False,
                encoding="utf-8-sig",
            )
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{path}: the file is empty; a header row is required") from None
    except pd.errors.ParserWarning:
        raise DataFileError(f"{path}, line 2: more fields than the header has") from None
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: cannot read as UTF-8 text ({err.reason} at byte {err.start})") from None
    except (OSError, ValueError) as err:  # pandas' ParserError is a ValueError and names the line
        if ragged := RAGGED_ROW.search(str(err)):
            expected, line, fields = ragged.groups()
            raise DataFileError(f"{path}: cannot read as CSV (line {line}: {fields} fields, but the header has "
                                f"{expected})") from None
        raise DataFileError(f"{path}: cannot read as CSV ({one_line(err)})") from None
    names = _header(pd, path, len(frame.columns))
    if len(set(names)) != len(names):
        raise DataFileError(f"{path}: the header repeats a column name: {', '.join(names)}")
    header_newlines = sum(name.count("\n") for name in names)
    empty = frame.isna().all(axis=1)
    if keep_empty_rows and empty.any():
        frame = frame.drop(index=_blank_lines(DataFile(path, "csv", frame, header_newlines), frame.index[empty]))
    else:
        frame = frame[~empty]  # blank lines; the labels of the other rows are kept
    if frame.empty:
        raise DataFileError(f"{path}: no data rows after the header")
    return DataFile(path, "csv", frame, header_newlines)


def _blank_lines(data: DataFile, rows: Any) -> list[Any]:
    """Those of ``rows`` (all cells missing) that are blank lines, not records of empty cells."""
    frame = data.frame
    breaks = np.zeros(len(frame))  # line breaks inside each record's quoted cells
    for name in frame.columns:
        if frame[name].dtype == object:
            breaks += frame[name].str.count("\n").fillna(0).to_numpy()
    # Each record's first line, as DataFile.line finds it, for all rows at once.
    starts = frame.index.to_numpy() + 2 + data.header_newlines + np.cumsum(breaks) - breaks
    lines = re.split(r"\r\n|\r|\n", data.path.read_text(encoding="utf-8-sig"))
    first_line = dict(zip(frame.index, starts))
    return [row for row in rows if not lines[int(first_line[row]) - 1].strip()]


def _header(pd: Any, path: Path, count: int) -> list[str]:
    """The header's names as written: read_csv renames a repeated ``a`` to ``a.1``."""
    row = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    return [str(name) for name in row.iloc[0].tolist()[:count]]


def _read_parquet(path: Path) -> DataFile:
    pd = pandas_module()
    try:
        frame = pd.read_parquet(path)
    except ImportError as err:
        raise DataFileError(f"{path}: reading Parquet needs pyarrow: {err}") from None
    except Exception as err:  # noqa: BLE001  pyarrow's errors (ArrowInvalid, OSError, ...) for a bad file
        raise DataFileError(f"{path}: cannot read as Parquet ({one_line(err)})") from None
    # A stored index: named levels become columns again; row labels become positions either way.
    named = any(name is not None for name in frame.index.names)
    frame = frame.reset_index(drop=not named)
    if frame.empty:
        raise DataFileError(f"{path}: no data rows")
    return DataFile(path, "parquet", frame)


def check_columns(data: DataFile, wanted: Mapping[str, str]) -> None:
    """Each column of ``wanted`` (column -> the option that names it) must be in the file."""
    present = set(data.columns())
    for column, option in wanted.items():
        if column not in present:
            raise DataFileError(
                f"{data.path}: no column {column!r} ({option}); its columns are: {', '.join(data.columns())}"
            )


def cell_error_message(err: CellError, files: Mapping[str, DataFile], id_column: str, timestamp_column: str) -> str:
    """``FILE, line N, column 'x': <what>`` for a :class:`CellError` of the frame read from a file in ``files``
    (keyed by the frame's name in the error, ``"df"`` or ``"future_df"``)."""
    data = files.get(err.frame)
    if data is None or err.column not in data.frame.columns or err.row not in data.frame.index:
        return f"{_file_of(err, files)}: {strip_frame_name(str(err))}"
    cell = data.frame.at[err.row, err.column]
    if err.column == id_column:
        what = "the item id is empty"
    elif err.column == timestamp_column:
        what = "the timestamp is empty" if _missing(cell) else f"{_shown(cell)} is not a timestamp"
    else:
        what = _value_problem(cell, future=err.frame == "future_df")
    if err.column != id_column and id_column in data.frame.columns:
        item = data.frame.at[err.row, id_column]
        if not _missing(item):
            what += f" (item {_shown(item)})"
    return f"{data.where(err.row, err.column)}: {what}"


def value_error_message(err: ValueError, files: Mapping[str, DataFile]) -> str:
    """``FILE: <message>`` for a ValueError about the frame read from one of ``files``."""
    return f"{_file_of(err, files)}: {strip_frame_name(str(err))}"


def strip_frame_name(message: str) -> str:
    """The message without a leading ``df: `` or ``future_df: `` (the file's name replaces it)."""
    for prefix in ("future_df: ", "df: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _file_of(err: ValueError, files: Mapping[str, DataFile]) -> Path:
    frame = getattr(err, "frame", None) or ("future_df" if str(err).startswith("future_df") else "df")
    return (files.get(frame) or files["df"]).path


def _missing(cell: Any) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell))


def _shown(cell: Any) -> str:
    """A cell as an error shows it: text quoted, anything else (a number, a time) as printed."""
    return repr(cell) if isinstance(cell, str) else str(cell)


def _value_problem(cell: Any, *, future: bool) -> str:
    try:
        number = float(cell)
    except (TypeError, ValueError):
        return f"{_shown(cell)} is not a number"
    if math.isinf(number):
        return f"{_shown(cell)} is infinite; a missing value must be empty (or NaN)"
    if math.isnan(number):
        return "missing; the known future values of an exogenous column must all be given" if future else "missing"
    return f"{_shown(cell)} is not a number"


def check_output_path(path: Path, option: str) -> None:
    """An output must be a file path in an existing folder."""
    if path.is_dir() or not path.resolve().parent.is_dir():
        raise DataFileError(f"{option} {path}: not a file path in an existing folder")


class StagedOutputs:
    """Outputs written to temporary files beside their destinations, moved into place together.

    :meth:`write` runs a writer on a fresh temporary path in the destination's folder;
    :meth:`commit` ``os.replace``-s every staged file onto its destination. Leaving the
    ``staged_outputs()`` block by an exception deletes the temporary files, so no
    destination is created or changed.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, destination)

    def write(self, path: Path, writer: Callable[[Path], None]) -> None:
        temporary = _temporary_beside(path)
        self._staged.append((temporary, path))
        writer(temporary)

    def commit(self) -> None:
        while self._staged:
            temporary, path = self._staged[0]
            os.replace(temporary, path)
            self._staged.pop(0)

    def discard(self) -> None:
        for temporary, _ in self._staged:
            try:
                temporary.unlink()
            except FileNotFoundError:
                pass
        self._staged.clear()


@contextmanager
def staged_outputs() -> Iterator[StagedOutputs]:
    """A :class:`StagedOutputs` committed when the block ends normally, discarded when it raises."""
    outputs = StagedOutputs()
    try:
        yield outputs
        outputs.commit()
    finally:
        outputs.discard()


def _temporary_beside(path: Path) -> Path:
    """A new, empty, hidden file in ``path``'s folder, created with the mode (umask applied) of a new file."""
    for _ in range(100):
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise DataFileError(f"cannot write {path} ({err.strerror or err})") from None
        os.close(descriptor)
        return temporary
    raise DataFileError(f"cannot write {path}: no free temporary name in {path.parent}")


def frame_writer(frame: Any, path: Path) -> Callable[[Path], None]:
    """A writer for :meth:`StagedOutputs.write`: ``frame`` as Parquet or CSV, by ``path``'s suffix."""
    fmt = output_format(path)

    def write(temporary: Path) -> None:
        try:
            if fmt == "parquet":
                frame.to_parquet(temporary, index=False)
            else:
                frame.to_csv(temporary, index=False)
        except ImportError as err:
            raise DataFileError(f"cannot write {path}: {err}") from None
        except (OSError, ValueError, TypeError) as err:  # pyarrow's ArrowInvalid/ArrowTypeError are among these
            raise DataFileError(f"cannot write {path} ({one_line(err)})") from None

    return write
