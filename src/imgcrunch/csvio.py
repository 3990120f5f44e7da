"""Input CSVs of products and their image URLs in, output CSVs out: pure logic, which reads
only the file object it is handed and opens nothing itself.

`check` accepts the loose formats found in the wild (see "Input CSV" in DESIGN.md) and either
counts the rows or raises one `CsvError` that names every problem of the file at once, so a
user fixes their file in one go rather than one upload per mistake. `rows` then reads an
accepted file's rows one at a time, so that a catalog of a million images is never in memory
whole; the output CSV is written a piece at a time, the same way.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
import sys
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from imgcrunch.config import Settings

__all__ = [
    "OUTPUT_HEADER",
    "CsvError",
    "CsvSummary",
    "InputRow",
    "Limits",
    "OutputRow",
    "ParsedCsv",
    "Problem",
    "check",
    "output_header",
    "output_rows",
    "parse",
    "rows",
    "write_output",
]


@dataclass(frozen=True, slots=True)
class Limits:
    """What an input file may hold; the configurable ones come from `Settings`, never restated."""

    max_rows: int  # data rows
    max_urls_per_row: int
    max_url_length: int
    max_problems: int = 1000  # problems reported at most, then one saying how many more

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_rows=settings.max_csv_rows,
            max_urls_per_row=settings.max_urls_per_row,
            max_url_length=settings.max_url_length,
        )


# A file `check` accepted is read again with no limits: those it was held to may have changed.
_ACCEPTED = Limits(max_rows=sys.maxsize, max_urls_per_row=sys.maxsize, max_url_length=sys.maxsize)


@dataclass(frozen=True, slots=True)
class Problem:
    row: int | None  # line where the record starts (header line = 1); None: about the whole file
    column: str | None  # the column's header text as written in the file; None: not one column
    reason: str


class CsvError(Exception):
    """Why a file was refused; `code` is stable for programs, `message` is for people."""

    code: str  # not_csv | empty_file | missing_columns | invalid_rows | too_many_rows
    message: str
    problems: tuple[Problem, ...]

    def __init__(self, code: str, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = tuple(problems)

    def __reduce__(self) -> tuple[type[CsvError], tuple[str, str, tuple[Problem, ...]]]:
        # Exception pickles only `args`, which would lose the code and problems.
        return (CsvError, (self.code, self.message, self.problems))


@dataclass(frozen=True, slots=True)
class InputRow:
    line: int  # line where the record starts (header = 1)
    serial: str  # verbatim apart from surrounding whitespace: "001" stays "001"
    name: str
    urls: tuple[str, ...]
    extra: tuple[str, ...]  # in the order of ParsedCsv.extra_columns, "" where the row is short


@dataclass(frozen=True, slots=True)
class CsvSummary:
    """What `check` found in a file it accepted."""

    extra_columns: tuple[str, ...]  # header text of the input's other columns, in file order
    row_count: int
    image_count: int


@dataclass(frozen=True, slots=True)
class ParsedCsv:
    extra_columns: tuple[str, ...]  # header text of the input's other columns, in file order
    rows: tuple[InputRow, ...]

    @property
    def image_count(self) -> int:
        return sum(len(row.urls) for row in self.rows)


@dataclass(frozen=True, slots=True)
class OutputRow:
    serial: str
    name: str
    input_urls: Sequence[str]
    output_urls: Sequence[str | None]  # same length and order as input_urls; None: image failed
    extra: Sequence[str]
    bytes_in: int
    bytes_out: int
    errors: Sequence[str]  # e.g. "http://x/a.jpg: http_error: HTTP 404"
    # Input URLs whose own bytes (without metadata) are the output: re-encoding would not shrink
    # them.
    kept_originals: Sequence[str] = ()
    # Input URLs whose bytes at the origin changed since the owner's last request with the same
    # options: made again, at new URLs (their neighbours unchanged keep theirs).
    changed: Sequence[str] = ()
    # Per variant after the first, its URLs as output_urls are: same length, None where failed.
    variant_urls: Sequence[Sequence[str | None]] = ()
    # With a marketplace profile: "compliant", or "not compliant: " and what was found, per
    # image. None: the request has no profile, and the CSV no such column.
    compliance: str | None = None


OUTPUT_HEADER: tuple[str, ...] = ("S. No.", "Product Name", "Input Image Urls", "Output Image Urls")
_FIGURES_HEADER = ("Bytes In", "Bytes Out", "Errors", "Kept Originals", "Changed Images")
COMPLIANCE_HEADER = "Compliance"  # last, where the request has a marketplace profile

# ---------------------------------------------------------------------------------------------
# Reading text out of bytes

_UTF8_BOM = b"\xef\xbb\xbf"
# Text files never hold these; binary files nearly always do. Tab, CR and LF are real text.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Appended as a last line of its own to detect a quote left open: the csv module then silently
# swallows the rest of the file, this line included. It cannot occur in the text itself because
# _CONTROL_CHARS refuses it.
_END_MARK = "\x01"


_READ_SIZE = 1024 * 1024  # bytes read at a time: a file of any size is read in this much memory


def _text_start(file: BinaryIO) -> int:
    """Where the text begins: after a UTF-8 byte order mark, if the file has one."""
    file.seek(0)
    return len(_UTF8_BOM) if file.read(len(_UTF8_BOM)) == _UTF8_BOM else 0


def _encoding(file: BinaryIO, start: int) -> str:
    """UTF-8, or Windows-1252 for a file that is not UTF-8; CsvError if it is not text at all.

    Read through in pieces: the whole file is never in memory."""
    try:
        _check_text(file, start, "utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return "utf-8"
    # Excel's plain "CSV" export writes the Windows code page, cp1252 in the West.
    try:
        _check_text(file, start, "cp1252")
    except UnicodeDecodeError:
        raise CsvError(
            "not_csv", "the file is not text: it is neither UTF-8 nor Windows-1252"
        ) from None
    return "cp1252"


def _check_text(file: BinaryIO, start: int, encoding: str) -> None:
    file.seek(start)
    decoder = codecs.getincrementaldecoder(encoding)()
    while True:
        chunk = file.read(_READ_SIZE)
        if b"\x00" in chunk:
            raise CsvError(
                "not_csv",
                "the file contains NUL bytes: it is binary, or UTF-16 text; save it as CSV (UTF-8)",
            )
        text = decoder.decode(chunk, final=not chunk)
        if _CONTROL_CHARS.search(text):
            raise CsvError(
                "not_csv", "the file contains control characters: it is not a CSV text file"
            )
        if not chunk:
            return


@dataclass(frozen=True, slots=True)
class _Text:
    """A checked file's text, to be read from its start as often as need be."""

    file: BinaryIO
    start: int
    encoding: str

    @classmethod
    def of(cls, file: BinaryIO) -> _Text:
        start = _text_start(file)
        return cls(file, start, _encoding(file, start))

    @contextmanager
    def lines(self) -> Iterator[Iterator[str]]:
        """The text's lines from its start, each with its line end."""
        self.file.seek(self.start)
        # newline="": csv sees quoted line breaks as written, and lines end at CRLF, LF or CR.
        wrapper = io.TextIOWrapper(self.file, encoding=self.encoding, newline="")
        try:
            yield iter(wrapper)
        finally:
            wrapper.detach()  # the file stays open: it is the caller's


# ---------------------------------------------------------------------------------------------
# Splitting text into records

_DELIMITERS = (",", ";", "\t")  # in order of preference when several would do
# A line of nothing but delimiters (",,," from a spreadsheet's empty row) is blank whichever
# delimiter the file turns out to use.
_BLANK = re.compile(r"[\s,;]*")
# A quoted cell may hold 100 URLs of 2 KB each, more than csv's default limit of 128 KiB; the
# upload size limit bounds cells instead. The setting is process-wide, so it is only ever raised,
# and always to this same value, so that concurrent parses cannot lower it under each other.
_FIELD_SIZE_LIMIT = 2**31 - 1  # the largest a C long holds everywhere


@dataclass(frozen=True, slots=True)
class _Record:
    line: int
    fields: list[str]
    error: str | None = None


def _allow_long_cells() -> None:
    if csv.field_size_limit() < _FIELD_SIZE_LIMIT:
        csv.field_size_limit(_FIELD_SIZE_LIMIT)


def _records(lines: Iterable[str], delimiter: str) -> Iterator[_Record]:
    """Non-blank records with the line each starts on; a record csv cannot read carries an error."""
    # skipinitialspace: `1, Mug, "http://a/1.jpg, http://a/2.jpg"` is quoted as its author meant.
    reader = csv.reader(
        itertools.chain(lines, [_END_MARK]), delimiter=delimiter, skipinitialspace=True
    )
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield _Record(start, [], f"this row cannot be read as CSV: {error}")
            if reader.line_num < start:
                return  # nothing consumed: retrying would fail the same way forever
            continue
        if fields == [_END_MARK]:
            return
        if any(_END_MARK in field for field in fields):
            yield _Record(start, [], 'a quoted cell that starts in this row is never closed (")')
            return
        if not all(_BLANK.fullmatch(field) for field in fields):
            yield _Record(start, fields)


# ---------------------------------------------------------------------------------------------
# The header


@dataclass(frozen=True, slots=True)
class _Role:
    label: str  # how messages name the column
    spellings: tuple[str, ...]  # shown to users; what matches is their _normalized form


_SERIAL = _Role(
    "S. No.", ("S. No.", "S. No", "S.No", "Serial Number", "Serial No", "Sr. No", "sno")
)
_NAME = _Role("Product Name", ("Product Name", "Name", "Product"))
_URLS = _Role(
    "Input Image Urls",
    ("Input Image Urls", "Input Urls", "Image Urls", "Input Image Url", "Image Url", "Urls", "Url"),
)
_ROLES = (_SERIAL, _NAME, _URLS)
_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]")


def _normalized(name: str) -> str:
    return _NOT_ALPHANUMERIC.sub("", name.lower())


_ROLE_KEYS = {
    role: frozenset(_normalized(spelling) for spelling in role.spellings) for role in _ROLES
}


@dataclass(frozen=True, slots=True)
class _Header:
    line: int
    names: tuple[str, ...]  # stripped header texts
    serial: int  # column indexes
    name: int
    urls: int
    extras: tuple[int, ...]


def _header_names(fields: Sequence[str]) -> tuple[str, ...]:
    # A trailing delimiter on the header line makes empty columns nobody meant to have.
    return tuple(_without_trailing_blanks([field.strip() for field in fields]))


def _without_trailing_blanks(fields: list[str]) -> list[str]:
    end = len(fields)
    while end and not fields[end - 1].strip():
        end -= 1
    return fields[:end]


def _role_columns(names: Sequence[str]) -> dict[_Role, list[int]]:
    keys = [_normalized(name) for name in names]
    return {role: [i for i, key in enumerate(keys) if key in _ROLE_KEYS[role]] for role in _ROLES}


def _read_header(text: _Text) -> tuple[str, _Header]:
    """The delimiter that finds every required column on the first record, and that header."""
    attempts: list[tuple[_Record, dict[_Role, list[int]]]] = []
    for delimiter in _DELIMITERS:
        with text.lines() as lines:
            record = next(_records(lines, delimiter), None)
        if record is None:  # nothing but blank lines, whatever the delimiter
            raise CsvError("empty_file", "the file is empty")
        columns = _role_columns(_header_names(record.fields))
        if all(columns.values()):
            return delimiter, _header(record, columns)
        attempts.append((record, columns))
    # Report what the delimiter that came closest saw; max() keeps the preferred one on ties.
    record, columns = max(attempts, key=lambda attempt: sum(map(bool, attempt[1].values())))
    raise _missing_columns_error(record, columns)


def _header(record: _Record, columns: dict[_Role, list[int]]) -> _Header:
    names = _header_names(record.fields)
    for role, indexes in columns.items():
        if len(indexes) > 1:
            raise _duplicated_column_error(record.line, role, [names[i] for i in indexes])
    serial, name, urls = (columns[role][0] for role in _ROLES)
    extras = tuple(i for i in range(len(names)) if i not in (serial, name, urls))
    return _Header(record.line, names, serial, name, urls, extras)


def _accepted(role: _Role) -> str:
    return ", ".join(f"'{spelling}'" for spelling in role.spellings)


def _missing_columns_error(record: _Record, columns: dict[_Role, list[int]]) -> CsvError:
    missing = [role for role, indexes in columns.items() if not indexes]
    found = ", ".join(f"'{_shortened(name)}'" for name in _header_names(record.fields))
    problems = [
        Problem(record.line, None, f"no '{role.label}' column; accepted names: {_accepted(role)}")
        for role in missing
    ]
    message = (
        f"missing required column(s) {', '.join(repr(role.label) for role in missing)} "
        f"in the header (line {record.line}); found: {found or record.error or 'nothing'}; "
        "columns are separated by ',', ';' or a tab; accepted names: "
        + "; ".join(f"{role.label}: {_accepted(role)}" for role in _ROLES)
    )
    return CsvError("missing_columns", message, problems)


def _duplicated_column_error(line: int, role: _Role, names: list[str]) -> CsvError:
    listed = ", ".join(f"'{name}'" for name in names)
    reason = f"the '{role.label}' column is duplicated: {listed}; keep only one of them"
    problems = [Problem(line, name, reason) for name in names]
    return CsvError("missing_columns", f"{reason} (header, line {line})", problems)


# ---------------------------------------------------------------------------------------------
# Data rows


class _Problems:
    """Collects problems up to a limit, still counting those beyond it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._kept: list[Problem] = []
        self._total = 0
        self._rows: set[int] = set()

    def add(self, row: int, column: str | None, reason: str) -> None:
        self._total += 1
        self._rows.add(row)
        if len(self._kept) < self._limit:
            self._kept.append(Problem(row, column, reason))

    def raise_if_any(self) -> None:
        if not self._total:
            return
        problems = list(self._kept)
        if self._total > len(self._kept):
            problems.append(Problem(None, None, f"{self._total - len(self._kept)} more problems"))
        first = self._kept[0] if self._kept else problems[0]
        message = (
            f"{_counted(self._total, 'problem')} in {_counted(len(self._rows), 'row')}; "
            f"first: {_located(first)}"
        )
        raise CsvError("invalid_rows", message, problems)


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _located(problem: Problem) -> str:
    where = [] if problem.row is None else [f"row {problem.row}"]
    where += [] if problem.column is None else [f"column '{problem.column}'"]
    return f"{', '.join(where)}: {problem.reason}" if where else problem.reason


def _input_rows(
    lines: Iterable[str], delimiter: str, header: _Header, limits: Limits, problems: _Problems
) -> Iterator[InputRow]:
    """The data rows after the header, one at a time; what is wrong goes to `problems`."""
    records = _records(lines, delimiter)
    next(records)  # the header, read already
    count = 0
    for record in records:
        count += 1
        if count > limits.max_rows:
            raise _too_many_rows_error(record.line, limits.max_rows)
        if record.error is not None:
            problems.add(record.line, None, record.error)
            continue
        yield _read_row(record, header, limits, problems)
    if not count:
        raise CsvError("empty_file", f"the file has a header (line {header.line}) but no data rows")


def _too_many_rows_error(line: int, max_rows: int) -> CsvError:
    reason = f"more than {max_rows} data rows, the most one file may have"
    return CsvError(
        "too_many_rows",
        f"the file has {reason}; split it into smaller files",
        [Problem(line, None, reason)],
    )


def _read_row(record: _Record, header: _Header, limits: Limits, problems: _Problems) -> InputRow:
    cells, url_fields = _cells(record, header, problems)
    serial = cells[header.serial].strip()
    name = cells[header.name].strip()
    urls = _split_urls(url_fields)
    if not serial:
        problems.add(record.line, header.names[header.serial], "the serial number is empty")
    if not name:
        problems.add(record.line, header.names[header.name], "the product name is empty")
    _check_urls(record.line, header.names[header.urls], urls, limits, problems)
    extra = tuple(cells[i].strip() for i in header.extras)
    return InputRow(record.line, serial, name, tuple(urls), extra)


def _cells(record: _Record, header: _Header, problems: _Problems) -> tuple[list[str], list[str]]:
    """The record's cells, padded to the header's width, and the fields holding its URLs."""
    fields = _without_trailing_blanks(record.fields)
    width = len(header.names)
    cells = fields[:width] + [""] * (width - len(fields))
    spill = fields[width:]
    # Unquoted URLs split into several fields; they can only be told apart from the other
    # columns when the URL column is the last one.
    if header.urls == width - 1:
        return cells, [cells[header.urls], *spill]
    if spill:
        problems.add(
            record.line,
            None,
            f"row has {len(fields)} fields but the header has {width}; "
            "put several URLs in one quoted cell, separated by commas",
        )
    return cells, [cells[header.urls]]


_URL_SEPARATORS = re.compile(r"[,\r\n]")


def _split_urls(fields: Iterable[str]) -> list[str]:
    pieces = (piece.strip() for field in fields for piece in _URL_SEPARATORS.split(field))
    return [piece for piece in pieces if piece]


def _check_urls(
    line: int, column: str, urls: Sequence[str], limits: Limits, problems: _Problems
) -> None:
    if not urls:
        problems.add(line, column, "no image URL")
    if len(urls) > limits.max_urls_per_row:
        problems.add(
            line, column, f"{len(urls)} image URLs, more than the {limits.max_urls_per_row} allowed"
        )
    for url in urls:
        reason = _url_problem(url, limits.max_url_length)
        if reason is not None:
            problems.add(line, column, reason)


_WHITESPACE = re.compile(r"\s")


def _url_problem(url: str, max_length: int) -> str | None:
    if len(url) > max_length:
        return f"{_quoted(url)} is longer than {max_length} characters"
    if _WHITESPACE.search(url):
        return f"{_quoted(url)} contains whitespace; separate URLs with commas"
    if not _is_absolute_http_url(url):
        return f"{_quoted(url)} is not an absolute http(s) URL"
    return None


# Most URLs are this plain; urlsplit costs ten times more, which shows in a file of 100,000 URLs.
_PLAIN_HTTP_URL = re.compile(r"https?://[a-z0-9.-]+(?:[/?#]\S*)?", re.IGNORECASE)


def _is_absolute_http_url(url: str) -> bool:
    if _PLAIN_HTTP_URL.fullmatch(url):
        return True
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _shortened(value: str, limit: int = 100) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _quoted(value: str) -> str:
    return f"'{_shortened(value)}'"


# ---------------------------------------------------------------------------------------------
# Public functions


def check(file: BinaryIO, limits: Limits) -> CsvSummary:
    """What an input CSV holds, or one CsvError naming everything wrong with it.

    Read in pieces from the file's start, so that a file of a million rows costs no more
    memory than one of ten. Raises CsvError and nothing else, whatever the bytes.
    """
    text = _Text.of(file)
    _allow_long_cells()
    delimiter, header = _read_header(text)
    problems = _Problems(limits.max_problems)
    row_count = image_count = 0
    with text.lines() as lines:
        for row in _input_rows(lines, delimiter, header, limits, problems):
            row_count += 1
            image_count += len(row.urls)
    problems.raise_if_any()
    return CsvSummary(_extra_columns(header), row_count, image_count)


def rows(file: BinaryIO, *, skip: int = 0) -> Generator[InputRow, None, None]:
    """The data rows of a file `check` accepted, in file order, read in pieces; `skip`: leave
    out that many from the start (stored already)."""
    text = _Text.of(file)
    _allow_long_cells()
    delimiter, header = _read_header(text)
    problems = _Problems(1)
    with text.lines() as lines:
        yield from itertools.islice(
            _input_rows(lines, delimiter, header, _ACCEPTED, problems), skip, None
        )
    problems.raise_if_any()


def parse(data: bytes, limits: Limits) -> ParsedCsv:
    """Every row of an input CSV in memory, or one CsvError naming everything wrong with it.

    Raises CsvError and nothing else, whatever the bytes.
    """
    file = io.BytesIO(data)
    summary = check(file, limits)
    return ParsedCsv(summary.extra_columns, tuple(rows(file)))


def _extra_columns(header: _Header) -> tuple[str, ...]:
    return tuple(header.names[i] for i in header.extras)


def write_output(
    extra_columns: Sequence[str],
    rows: Iterable[OutputRow],
    *,
    variant_columns: Sequence[str] = (),
    compliance: bool = False,
) -> bytes:
    """The output CSV: UTF-8 without BOM, CRLF line ends (RFC 4180). `variant_columns` name
    the URL columns of the variants after the first, which follow `Output Image Urls`;
    `compliance`: the request has a marketplace profile, so its rows say how they comply.

    Raises ValueError for a row whose lists do not match (a bug in the caller).
    """
    return output_header(
        extra_columns, variant_columns=variant_columns, compliance=compliance
    ) + output_rows(extra_columns, rows, variant_columns=variant_columns, compliance=compliance)


def output_header(
    extra_columns: Sequence[str], *, variant_columns: Sequence[str] = (), compliance: bool = False
) -> bytes:
    """The output CSV's first line; `output_rows` gives the rest, a piece at a time."""
    last = [COMPLIANCE_HEADER] if compliance else []
    return _csv_lines([[*OUTPUT_HEADER, *variant_columns, *extra_columns, *_FIGURES_HEADER, *last]])


def output_rows(
    extra_columns: Sequence[str],
    rows: Iterable[OutputRow],
    *,
    variant_columns: Sequence[str] = (),
    compliance: bool = False,
) -> bytes:
    """Lines of the output CSV, as `write_output` writes them after its header."""
    extra_width, variant_width = len(extra_columns), len(variant_columns)
    return _csv_lines(
        _output_cells(row, extra_width, variant_width, compliance=compliance) for row in rows
    )


def _csv_lines(cells: Iterable[list[str]]) -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL).writerows(cells)
    return buffer.getvalue().encode("utf-8")


def _output_cells(
    row: OutputRow, extra_width: int, variant_width: int, *, compliance: bool
) -> list[str]:
    for urls in (row.output_urls, *row.variant_urls):
        if len(urls) != len(row.input_urls):
            raise ValueError(
                f"row {row.serial!r}: {len(row.input_urls)} input URLs but {len(urls)} output URLs"
            )
    if len(row.variant_urls) != variant_width:
        raise ValueError(
            f"row {row.serial!r}: {len(row.variant_urls)} variants' URLs "
            f"for {variant_width} variant columns"
        )
    if len(row.extra) != extra_width:
        raise ValueError(
            f"row {row.serial!r}: {len(row.extra)} extra values for {extra_width} extra columns"
        )
    if compliance and row.compliance is None:
        raise ValueError(f"row {row.serial!r}: no compliance for the Compliance column")
    last = [row.compliance or ""] if compliance else []
    return [
        row.serial,
        row.name,
        ",".join(row.input_urls),
        _url_cell(row.output_urls),
        *(_url_cell(urls) for urls in row.variant_urls),
        *row.extra,
        str(row.bytes_in),
        str(row.bytes_out),
        "; ".join(row.errors),
        ",".join(row.kept_originals),
        ",".join(row.changed),
        *last,
    ]


def _url_cell(urls: Sequence[str | None]) -> str:
    # A failed image keeps its place as an empty piece, so positions line up with the input's.
    return ",".join("" if url is None else url for url in urls)
