"""One set of rules for every user text file the readers take (captions, ids, TSV rows, Entities sentences,
Karpathy JSON, Entities XML, `ccr extract` captions files).

- **Encoding**: UTF-8. A leading byte-order mark (U+FEFF, what Windows editors write) is dropped, so it
  never reaches the first caption, image id or phrase span. Bytes that are not UTF-8 are one error naming
  the file, the line and the column (in bytes).
- **Line endings**: a line ends at LF, CR LF or a lone CR (old Mac files), mixed freely. Nothing else ends
  a line: `str.splitlines` also splits at form feeds, U+2028 and other separators, which would shift every
  caption after them.
- **The last line** (line-per-record files, `final_newline=True`): every writer of these formats ends each
  line with a line ending, so a last line without one is a file cut off mid-record (a failed copy or
  download) and is refused, naming the file and the line, rather than read as a shorter record.

`iter_lines` streams (bottom-up-attention TSVs are tens of GB); `read_lines`, `read_text` and `read_json`
read small files whole. Each reader passes its own `UserError` subclass, so the error type stays the format's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

BOM = b"\xef\xbb\xbf"


class TextFileError(UserError, ValueError):
    """A text file that cannot be read: missing, not UTF-8, or cut off mid-line."""


@dataclass(frozen=True)
class TextLine:
    """One line: its 1-based `number`, its `text` without the line ending, and whether it had one."""

    number: int
    text: str
    ended: bool


def _decode(raw: bytes, path: Path, number: int, error: type[UserError]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(
            f"{path}, line {number}, column {err.start + 1}: not UTF-8 text (byte "
            f"{raw[err.start : err.start + 1].hex()}); save the file as UTF-8"
        ) from None


def _open(path: Path, error: type[UserError], what: str):
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise error(f"{path}: file not found ({what})") from None
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror or err})") from None


def iter_lines(
    path: str | Path,
    *,
    error: type[UserError] = TextFileError,
    final_newline: bool = True,
    what: str = "file",
) -> Iterator[TextLine]:
    """Every line of a UTF-8 text file, streamed (one line in memory at a time), by the module's rules.

    With `final_newline`, a last line without a line ending raises `error` naming the file and the line.
    An empty file yields nothing.
    """
    path = Path(path)
    number = 0
    with _open(path, error, what) as handle:
        try:
            for raw in handle:  # binary lines end at b"\n" only; a lone CR is split below
                if number == 0 and raw.startswith(BOM):
                    raw = raw[len(BOM) :]
                ended = raw.endswith(b"\n")
                body = raw[:-1] if ended else raw
                if ended and body.endswith(b"\r"):
                    body = body[:-1]
                elif not ended and body.endswith(b"\r"):
                    body, ended = body[:-1], True  # a file whose last line ends with a lone CR
                pieces = body.split(b"\r")  # lone CRs inside: line endings of their own
                for index, piece in enumerate(pieces):
                    number += 1
                    piece_ended = ended or index < len(pieces) - 1
                    if final_newline and not piece_ended:
                        raise error(
                            f"{path}, line {number}: the last line has no line ending, so the file looks cut "
                            f"off mid-line (every line of a complete {what} ends with a newline; if this line "
                            "is complete, add the newline)"
                        )
                    yield TextLine(number, _decode(piece, path, number, error), piece_ended)
        except OSError as err:
            raise error(f"{path}: cannot read the {what} ({err.strerror or err})") from None


def read_lines(
    path: str | Path,
    *,
    error: type[UserError] = TextFileError,
    final_newline: bool = True,
    what: str = "file",
) -> list[TextLine]:
    """`list(iter_lines(...))`: the whole file's lines."""
    return list(iter_lines(path, error=error, final_newline=final_newline, what=what))


def read_text(path: str | Path, *, error: type[UserError] = TextFileError, what: str = "file") -> str:
    """The text of a whole-document file (JSON, XML), BOM dropped; line endings are left as they are
    (both formats treat CR as white space), and a non-UTF-8 byte names its line and column."""
    path = Path(path)
    with _open(path, error, what) as handle:
        try:
            data = handle.read()
        except OSError as err:
            raise error(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if data.startswith(BOM):
        data = data[len(BOM) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        # CR and LF bytes never occur inside a UTF-8 sequence, so counting them in the raw bytes is exact.
        before = data[: err.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise error(
            f"{path}, line {line}, column {column}: not UTF-8 text (byte "
            f"{data[err.start : err.start + 1].hex()}); save the file as UTF-8"
        ) from None


def read_json(
    path: str | Path,
    *,
    error: type[UserError] = TextFileError,
    what: str = "file",
    object_hook: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:
    """The JSON value of a file read by `read_text`; invalid JSON (a file cut off mid-way ends this way
    too) is one error naming the line and column where the text stops making sense."""
    path = Path(path)
    text = read_text(path, error=error, what=what)
    try:
        return json.loads(text, object_hook=object_hook)
    except json.JSONDecodeError as err:
        raise error(
            f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); truncated or corrupt?"
        ) from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to be a {what}") from None


def ends_with_line_ending(path: str | Path) -> bool:
    """Whether a file's last byte ends a line (LF or CR); an empty file counts as ended. For formats
    whose last line may lack its newline, where a caller can tell a cut from a complete line otherwise."""
    with Path(path).open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() == 0:
            return True
        handle.seek(-1, 2)
        return handle.read(1) in (b"\n", b"\r")
