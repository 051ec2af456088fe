"""Tolerant JSONL reading: a bad line becomes a reported issue (file:line: what is wrong), never a
crash and never a silently dropped record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mellm.errors import MellmError


class InputFileError(MellmError):
    """An input file that cannot be used at all (missing, a directory, no usable line)."""


@dataclass(frozen=True)
class LineIssue:
    file: str
    line: int  # 1-based; 0 for a problem with the file as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


def iter_jsonl(path: Path, issues: list[LineIssue]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every line holding a JSON object. Blank lines are skipped; any
    other line that is not a JSON object is appended to `issues`."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, expected a JSONL file")
    name = str(path)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")  # decoding ourselves: given bytes, json would guess UTF-16 from a stray BOM
        except UnicodeDecodeError as e:
            issues.append(LineIssue(name, number, f"not UTF-8 ({e.reason} at byte {e.start})"))
            continue
        try:
            obj, end = _raw_decode(text)  # the fast path; json.loads below only to word an error
            if end != len(text) and text[end:].strip():
                raise ValueError("extra data")
        except RecursionError:
            issues.append(LineIssue(name, number, "invalid JSON: nested too deeply"))
            continue
        except ValueError:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                issues.append(LineIssue(name, number, f"invalid JSON: {e.msg} (column {e.colno})"))
                continue
        if not isinstance(obj, dict):
            issues.append(LineIssue(name, number, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        yield number, obj


_raw_decode = json.JSONDecoder().raw_decode


def text_field(obj: dict, key: str, *, required: bool) -> str | None:
    """A string field; numbers are accepted as their text ("subject": 1 -> "1"). Raises ValueError
    naming the field when it is required and missing, or of another type."""
    value = obj.get(key)
    if type(value) is str:  # the common case, first: this runs ten times per line of 100k-line files
        return value
    if value is None:
        if required:
            raise ValueError(f"missing field {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"field {key!r} must be a string, got {type(value).__name__} {json.dumps(value)[:60]}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def int_field(obj: dict, key: str) -> int | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"field {key!r} must be a frame number, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"field {key!r} must be a frame number, got {value!r}") from None
    if number != float(value):
        raise ValueError(f"field {key!r} must be a whole frame number, got {value!r}")
    return number


def ends_with_newline(path: Path) -> bool:
    """False when the file's last line was cut off (e.g. a killed run), so an appender knows to
    start a new line first."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return True
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"
