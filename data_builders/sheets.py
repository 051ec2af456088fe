"""Reading the datasets' annotation spreadsheets (xlsx, csv) into rows keyed by column name.

Column names are matched loosely (case, spaces and punctuation ignored: "Onset Frame" =
"OnsetFrame" = "onset_frame"), and each adapter lists the aliases it accepts, because the same
column is spelt differently across datasets and releases.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from mellm.errors import MellmError


class AnnotationFileError(MellmError):
    """An annotation file that is missing or cannot be read at all."""


def fold(name: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


@dataclass
class SheetRow:
    file: Path
    number: int  # 1-based row number in the file, for messages
    cells: dict[str, object]  # folded column name -> value

    def get(self, *names: str, default=None):
        """The first of `names` (aliases) present in the row."""
        for n in names:
            value = self.cells.get(fold(n))
            if value is not None and str(value).strip() != "":
                return value
        return default

    def where(self) -> str:
        return f"{self.file.name} row {self.number}"


def find_file(root: Path, patterns: list[str], what: str) -> Path:
    """The annotation file under `root` (searched two levels deep) matching one of `patterns`."""
    for pattern in patterns:
        for depth in ("", "*/", "*/*/"):
            hits = sorted(root.glob(depth + pattern))
            if hits:
                return hits[0]
    raise AnnotationFileError(f"no {what} annotation file ({' or '.join(patterns)}) under {root}")


def read_rows(path: Path, required: list[list[str]], header_row: int | None = None) -> list[SheetRow]:
    """Rows of the first sheet (xlsx) or of a csv file.

    required: for each needed column, its accepted names. The header is `header_row` (1-based) when
    given (SAMM's sits on row 14), else the first row that contains every required column."""
    if path.suffix.lower() == ".xls":
        raise AnnotationFileError(f"{path}: old .xls files cannot be read; save it as .xlsx or .csv")
    table = _read_table(path)
    header_index = (header_row - 1) if header_row else _find_header(table, required)
    if header_index is None or header_index >= len(table):
        names = "; ".join("/".join(r) for r in required)
        raise AnnotationFileError(f"{path}: no header row with the columns {names}")
    header = [fold(c) for c in table[header_index]]
    missing = [alias[0] for alias in required if not any(fold(a) in header for a in alias)]
    if missing:
        raise AnnotationFileError(f"{path}: header row {header_index + 1} lacks column(s) {', '.join(missing)}")
    rows = []
    for i, values in enumerate(table[header_index + 1:], start=header_index + 2):
        if all(v is None or str(v).strip() == "" for v in values):
            continue
        cells = {h: v for h, v in zip(header, values) if h}
        rows.append(SheetRow(path, i, cells))
    return rows


def _read_table(path: Path) -> list[list]:
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                return [list(r) for r in csv.reader(f)]
        import openpyxl

        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            return [list(r) for r in book.worksheets[0].iter_rows(values_only=True)]
        finally:
            book.close()
    except AnnotationFileError:
        raise
    except Exception as e:  # openpyxl raises several types for a broken file
        raise AnnotationFileError(f"cannot read {path}: {e}") from e


def _find_header(table: list[list], required: list[list[str]]) -> int | None:
    for i, values in enumerate(table[:50]):
        present = {fold(v) for v in values if v is not None}
        if all(any(fold(a) in present for a in alias) for alias in required):
            return i
    return None


def frame_number(row: SheetRow, *names: str, required: bool = True) -> int | None:
    """A frame-number cell; "/" or empty gives None (e.g. CASME II's missing apexes)."""
    value = row.get(*names)
    if value is None or str(value).strip() in ("/", "-", "nan"):
        if required:
            raise ValueError(f"{row.where()}: no {names[0]}")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{row.where()}: {names[0]} {value!r} is not a frame number") from None
    if not number.is_integer() or number < 0:
        raise ValueError(f"{row.where()}: {names[0]} {value!r} is not a frame number")
    return int(number)
