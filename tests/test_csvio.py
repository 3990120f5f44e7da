"""csvio: what a user uploading a CSV sees, accepted or refused, and the output CSV they get."""

from __future__ import annotations

import csv
import io
import pickle
import tracemalloc
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcrunch import csvio
from imgcrunch.config import Settings
from imgcrunch.csvio import (
    OUTPUT_HEADER,
    CsvError,
    CsvSummary,
    InputRow,
    Limits,
    OutputRow,
    ParsedCsv,
    Problem,
    parse,
    write_output,
)

HEADER = "S. No,Product Name,Input Image Urls"
A = "https://img.example.com/a.jpg"
B = "https://img.example.com/b.jpg"
C = "http://img.example.com/c.png"
DEFAULT_LIMITS = Limits.from_settings(Settings())


def parse_text(text: str, limits: Limits = DEFAULT_LIMITS) -> ParsedCsv:
    return parse(text.encode("utf-8"), limits)


def refusal(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> CsvError:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with pytest.raises(CsvError) as caught:
        parse(raw, limits)
    return caught.value


def problems(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    error = refusal(data, limits)
    assert error.code == "invalid_rows"
    return list(error.problems)


def summary(parsed: ParsedCsv) -> list[tuple[int, str, str, tuple[str, ...]]]:
    return [(row.line, row.serial, row.name, row.urls) for row in parsed.rows]


# --- accepted variants -----------------------------------------------------------------------


def test_classic_file_with_quoted_comma_separated_urls() -> None:
    parsed = parse_text(f'{HEADER}\n1,SKU1,"{A},{B},{C}"\n2,SKU2,"{B}"\n')

    assert parsed.rows == (
        InputRow(line=2, serial="1", name="SKU1", urls=(A, B, C), extra=()),
        InputRow(line=3, serial="2", name="SKU2", urls=(B,), extra=()),
    )
    assert parsed.extra_columns == ()


def test_image_count_counts_every_url_of_every_row() -> None:
    parsed = parse_text(f'{HEADER}\n1,SKU1,"{A},{B}"\n2,SKU2,{C}\n')

    assert parsed.image_count == 3


def test_utf8_bom_is_ignored() -> None:
    parsed = parse(b"\xef\xbb\xbf" + f"{HEADER}\n1,Mug,{A}\n".encode(), DEFAULT_LIMITS)

    assert summary(parsed) == [(2, "1", "Mug", (A,))]


def test_crlf_line_ends() -> None:
    parsed = parse_text(f'{HEADER}\r\n1,Mug,"{A},{B}"\r\n2,Cup,{C}\r\n')

    assert summary(parsed) == [(2, "1", "Mug", (A, B)), (3, "2", "Cup", (C,))]


def test_lone_cr_line_ends() -> None:
    parsed = parse_text(f"{HEADER}\r1,Mug,{A}\r2,Cup,{C}\r")

    assert summary(parsed) == [(2, "1", "Mug", (A,)), (3, "2", "Cup", (C,))]


def test_blank_whitespace_and_delimiter_only_lines_are_skipped() -> None:
    parsed = parse_text(f"\n  \n{HEADER}\n\n1,Mug,{A}\n,,,\n \t \n2,Cup,{B}\n\n")

    assert summary(parsed) == [(5, "1", "Mug", (A,)), (8, "2", "Cup", (B,))]


def test_missing_final_newline() -> None:
    parsed = parse_text(f"{HEADER}\n1,Mug,{A}")

    assert summary(parsed) == [(2, "1", "Mug", (A,))]


def test_semicolon_delimiter_with_commas_between_urls() -> None:
    parsed = parse_text(f"S. No;Product Name;Input Image Urls\n1;Mug;{A},{B}\n")

    assert summary(parsed) == [(2, "1", "Mug", (A, B))]


def test_tab_delimiter() -> None:
    parsed = parse_text(f"S. No\tProduct Name\tInput Image Urls\n1\tMug, large\t{A},{B}\n")

    assert summary(parsed) == [(2, "1", "Mug, large", (A, B))]


def test_comma_is_preferred_when_several_delimiters_find_the_columns() -> None:
    # Split at ',' or at ';', this header names all three columns.
    parsed = parse_text(f";S. No;,Product Name,;Url;\n1,Mug;Large,{A}\n")

    assert summary(parsed) == [(2, "1", "Mug;Large", (A,))]


def test_columns_in_any_order() -> None:
    parsed = parse_text(f'Input Image Urls,Product Name,S. No\n"{A},{B}",Mug,7\n')

    assert summary(parsed) == [(2, "7", "Mug", (A, B))]


def test_other_columns_are_echoed_in_file_order() -> None:
    parsed = parse_text(f"Brand,S. No,Product Name, Price ,Input Image Urls\nAcme,1,Mug,9.99,{A}\n")

    assert parsed.extra_columns == ("Brand", "Price")
    assert parsed.rows[0].extra == ("Acme", "9.99")


def test_other_columns_missing_from_a_short_row_are_empty() -> None:
    parsed = parse_text(f"S. No,Product Name,Input Image Urls,Brand,Price\n1,Mug,{A}\n")

    assert parsed.rows[0].extra == ("", "")


def test_unquoted_urls_spill_into_trailing_fields_when_url_column_is_last() -> None:
    parsed = parse_text(f"{HEADER}\n1,Mug,{A}, {B} ,{C}\n")

    assert summary(parsed) == [(2, "1", "Mug", (A, B, C))]


def test_trailing_delimiters_and_empty_pieces_are_ignored() -> None:
    parsed = parse_text(f'{HEADER},\n1,Mug,"{A},,{B},",,,\n')

    assert summary(parsed) == [(2, "1", "Mug", (A, B))]
    assert parsed.extra_columns == ()


def test_trailing_empty_fields_are_ignored_when_url_column_is_not_last() -> None:
    parsed = parse_text(f"Input Image Urls,S. No,Product Name\n{A},1,Mug,,\n")

    assert summary(parsed) == [(2, "1", "Mug", (A,))]


def test_line_breaks_inside_a_quoted_url_cell_separate_urls() -> None:
    parsed = parse_text(f'{HEADER}\n1,Mug,"{A}\n{B}\r\n{C}"\n')

    assert summary(parsed) == [(2, "1", "Mug", (A, B, C))]


def test_whitespace_around_serial_name_and_urls_is_stripped() -> None:
    parsed = parse_text(f'{HEADER}\n  001 ,  Blue Mug  ,"  {A} ,\t{B}  "\n')

    assert summary(parsed) == [(2, "001", "Blue Mug", (A, B))]


def test_spaces_before_a_quoted_cell_do_not_break_its_quoting() -> None:
    parsed = parse_text(f'S. No, Product Name, Input Image Urls\n1, "Mug, blue", "{A}, {B}"\n')

    assert summary(parsed) == [(2, "1", "Mug, blue", (A, B))]


def test_text_after_a_closing_quote_is_kept() -> None:
    parsed = parse_text(f'{HEADER}\n1,"Mug" large,"{A}" \n')

    assert summary(parsed) == [(2, "1", "Mug large", (A,))]


@pytest.mark.parametrize(
    "spelling", ["S. No", "S. No.", "S.No", "Serial Number", "Serial No", "Sr. No", "sno", "SNO"]
)
def test_serial_column_spellings(spelling: str) -> None:
    parsed = parse_text(f"{spelling},Product Name,Input Image Urls\n1,Mug,{A}\n")

    assert summary(parsed) == [(2, "1", "Mug", (A,))]


@pytest.mark.parametrize("spelling", ["Product Name", "product_name", "Name", "Product", "NAME"])
def test_name_column_spellings(spelling: str) -> None:
    parsed = parse_text(f"S. No,{spelling},Input Image Urls\n1,Mug,{A}\n")

    assert summary(parsed) == [(2, "1", "Mug", (A,))]


@pytest.mark.parametrize(
    "spelling",
    [
        "Input Image Urls",
        "Input Image URLs",
        "Input URLs",
        "Image Urls",
        "Input Image Url",
        "Image URL",
        "urls",
        "URL",
        "input_image_urls",
    ],
)
def test_url_column_spellings(spelling: str) -> None:
    parsed = parse_text(f"S. No,Product Name,{spelling}\n1,Mug,{A}\n")

    assert summary(parsed) == [(2, "1", "Mug", (A,))]


def test_every_cell_quoted_as_spreadsheets_export_it() -> None:
    parsed = parse_text(f'"S. No","Product Name","Input Image Urls"\n"1","Mug","{A}"\n')

    assert summary(parsed) == [(2, "1", "Mug", (A,))]


@pytest.mark.parametrize(
    "url",
    [
        "HTTPS://IMG.EXAMPLE.COM/A.JPG",
        "http://img.example.com",
        "http://img.example.com:8080/a.jpg?w=100&h=100#top",
        "http://user:secret@img.example.com/a.jpg",
        "http://127.0.0.1:8000/a.jpg",
        "http://[::1]:8000/a.jpg",
        "https://b\u00fccher.example/\u00e4pfel.jpg",
        "https://img.example.com/a%20b.jpg;v=2",
    ],
)
def test_urls_accepted(url: str) -> None:
    assert parse_text(f"{HEADER}\n1,Mug,{url}\n").rows[0].urls == (url,)


def test_windows_1252_text_from_excel() -> None:
    data = f"{HEADER}\r\n1,Caf\u00e9 cr\u00e8me \u2013 50\u20ac,{A}\r\n".encode("cp1252")

    assert parse(data, DEFAULT_LIMITS).rows[0].name == "Caf\u00e9 cr\u00e8me \u2013 50\u20ac"


def test_utf8_product_names() -> None:
    parsed = parse_text(f"{HEADER}\n1,\u6f22\u5b57 Caf\u00e9 \U0001f600,{A}\n")

    assert parsed.rows[0].name == "\u6f22\u5b57 Caf\u00e9 \U0001f600"


def test_serial_is_kept_verbatim() -> None:
    parsed = parse_text(f"{HEADER}\n001,Mug,{A}\nA-7,Cup,{B}\n")

    assert [row.serial for row in parsed.rows] == ["001", "A-7"]


def test_a_quoted_multi_line_name_is_kept() -> None:
    parsed = parse_text(f'{HEADER}\n1,"Mug\nlarge",{A}\n2,Cup,{B}\n')

    assert summary(parsed) == [(2, "1", "Mug\nlarge", (A,)), (4, "2", "Cup", (B,))]


def test_a_cell_longer_than_the_csv_modules_default_limit() -> None:
    urls = [f"https://img.example.com/{i:04d}/{'x' * 1900}.jpg" for i in range(100)]
    parsed = parse_text(f'{HEADER}\n1,Mug,"{",".join(urls)}"\n')

    assert parsed.rows[0].urls == tuple(urls)


# --- refused files ---------------------------------------------------------------------------


def test_nul_bytes_are_not_csv() -> None:
    error = refusal(f"{HEADER}\n1,Mug,{A}\n".encode() + b"\x00")

    assert error.code == "not_csv"
    assert "NUL" in error.message


def test_png_is_not_csv() -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06"

    assert refusal(png).code == "not_csv"


def test_utf16_is_not_csv() -> None:
    assert refusal(f"{HEADER}\n1,Mug,{A}\n".encode("utf-16")).code == "not_csv"


def test_bytes_neither_utf8_nor_cp1252_are_not_csv() -> None:
    # 0x81 and 0x8d are undefined in Windows-1252 and invalid as UTF-8 here.
    assert refusal(f"{HEADER}\n1,Mug\x81\x8d,{A}\n".encode("latin-1")).code == "not_csv"


def test_control_characters_are_not_csv() -> None:
    assert refusal(f"{HEADER}\n1,Mug\x1b[0m,{A}\n").code == "not_csv"


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\r\n\n  \n", b",,,\n;;\n\t\n"])
def test_a_file_without_content_is_empty(data: bytes) -> None:
    assert refusal(data).code == "empty_file"


def test_a_header_without_data_rows_is_empty() -> None:
    error = refusal(f"{HEADER}\r\n\r\n,,\r\n")

    assert error.code == "empty_file"
    assert "no data rows" in error.message


def test_missing_column_names_what_was_found_and_what_is_accepted() -> None:
    error = refusal(f"S. No,Title,Input Image Urls\n1,Mug,{A}\n")

    assert error.code == "missing_columns"
    assert "'Product Name'" in error.message
    assert "found: 'S. No', 'Title', 'Input Image Urls'" in error.message
    assert "'Name'" in error.message
    assert [(p.row, p.column) for p in error.problems] == [(1, None)]
    assert "no 'Product Name' column" in error.problems[0].reason


def test_missing_column_is_reported_on_the_header_line_after_blank_lines() -> None:
    error = refusal(f"\n\nS. No,Product Name,Pictures\n1,Mug,{A}\n")

    assert error.code == "missing_columns"
    assert [(p.row, p.column) for p in error.problems] == [(3, None)]
    assert "'Input Image Urls'" in error.problems[0].reason


def test_a_header_with_a_quote_never_closed_has_no_columns() -> None:
    error = refusal(f'S. No,"Product Name,Input Image Urls\n1,Mug,{A}\n')

    assert error.code == "missing_columns"
    assert "never closed" in error.message


def test_no_required_column_with_any_delimiter() -> None:
    error = refusal("a|b|c\n1|2|3\n")

    assert error.code == "missing_columns"
    assert "found: 'a|b|c'" in error.message
    assert len(error.problems) == 3


def test_duplicated_required_column() -> None:
    error = refusal(f"S. No,Product Name,Image Urls,URL\n1,Mug,{A},{B}\n")

    assert error.code == "missing_columns"
    assert "duplicated" in error.message
    assert [(p.row, p.column) for p in error.problems] == [(1, "Image Urls"), (1, "URL")]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://img.example.com/a.jpg",
        "img.example.com/a.jpg",
        "/images/a.jpg",
        "//img.example.com/a.jpg",
        "http://",
        "https:///a.jpg",
        "http://img.example.com:port/a.jpg",
        "http://[::1/a.jpg",
        "mailto:someone@example.com",
        "a.jpg",
    ],
)
def test_a_url_that_is_not_absolute_http(url: str) -> None:
    assert problems(f"{HEADER}\n1,Mug,{url}\n") == [
        Problem(2, "Input Image Urls", f"'{url}' is not an absolute http(s) URL")
    ]


def test_the_problem_names_the_url_column_as_written() -> None:
    found = problems("Sr. No,Name,Input URLs\n1,Mug,ftp://x\n")

    assert found == [Problem(2, "Input URLs", "'ftp://x' is not an absolute http(s) URL")]


def test_a_url_with_whitespace_inside() -> None:
    found = problems(f'{HEADER}\n1,Mug,"{A} {B}"\n')

    assert [(p.row, p.column) for p in found] == [(2, "Input Image Urls")]
    assert f"'{A} {B}' contains whitespace" in found[0].reason


def test_a_url_longer_than_the_limit_is_quoted_shortened() -> None:
    long_url = "https://img.example.com/" + "x" * 200
    found = problems(f"{HEADER}\n1,Mug,{long_url}\n", replace(DEFAULT_LIMITS, max_url_length=100))

    assert [(p.row, p.column) for p in found] == [(2, "Input Image Urls")]
    assert "longer than 100 characters" in found[0].reason
    assert long_url[:97] + "..." in found[0].reason
    assert long_url not in found[0].reason


def test_a_url_at_the_length_limit_is_accepted() -> None:
    url = "https://img.example.com/" + "x" * 76

    assert (
        parse_text(
            f"{HEADER}\n1,Mug,{url}\n", replace(DEFAULT_LIMITS, max_url_length=100)
        ).image_count
        == 1
    )


def test_a_row_without_url() -> None:
    assert problems(f'{HEADER}\n1,Mug,""\n2,Cup\n3,Pen," , "\n') == [
        Problem(2, "Input Image Urls", "no image URL"),
        Problem(3, "Input Image Urls", "no image URL"),
        Problem(4, "Input Image Urls", "no image URL"),
    ]


def test_an_empty_product_name() -> None:
    assert problems(f"S. No,Product name,Image Urls\n1,  ,{A}\n") == [
        Problem(2, "Product name", "the product name is empty")
    ]


def test_a_missing_product_name_in_a_short_row() -> None:
    assert problems(f"Image Urls,S. No,Product Name\n{A},1\n") == [
        Problem(2, "Product Name", "the product name is empty")
    ]


def test_an_empty_serial_number() -> None:
    assert problems(f"S.No.,Product Name,Image Urls\n,Mug,{A}\n") == [
        Problem(2, "S.No.", "the serial number is empty")
    ]


def test_more_urls_than_allowed_in_a_row() -> None:
    found = problems(
        f'{HEADER}\n1,Mug,"{A},{B},{C}"\n', replace(DEFAULT_LIMITS, max_urls_per_row=2)
    )

    assert found == [Problem(2, "Input Image Urls", "3 image URLs, more than the 2 allowed")]


def test_extra_fields_when_the_url_column_is_not_last() -> None:
    found = problems(f"S. No,Input Image Urls,Product Name\n1,{A},Mug,{B}\n")

    assert [(p.row, p.column) for p in found] == [(2, None)]
    assert found[0].reason.startswith("row has 4 fields but the header has 3")


def test_a_quote_never_closed_is_reported_on_its_row() -> None:
    found = problems(f'{HEADER}\n1,Mug,{A}\n2,"Cup,{B}\n3,Pen,{C}\n')

    assert [(p.row, p.column) for p in found] == [(3, None)]
    assert "never closed" in found[0].reason


def test_all_problems_of_the_file_come_at_once() -> None:
    text = f'{HEADER}\n1,Mug,{A}\n,Cup,ftp://b\n3,,"{A},not a url"\n4,Pen,{B}\n5,Ink,\n'
    error = refusal(text)

    assert error.code == "invalid_rows"
    assert error.problems == (
        Problem(3, "S. No", "the serial number is empty"),
        Problem(3, "Input Image Urls", "'ftp://b' is not an absolute http(s) URL"),
        Problem(4, "Product Name", "the product name is empty"),
        Problem(
            4, "Input Image Urls", ("'not a url' contains whitespace; separate URLs with commas")
        ),
        Problem(6, "Input Image Urls", "no image URL"),
    )
    assert error.message.startswith("5 problems in 3 rows; first: row 3, column 'S. No': ")


def test_a_single_problem_is_counted_in_the_singular() -> None:
    assert refusal(f"{HEADER}\n1,Mug,ftp://a\n").message.startswith("1 problem in 1 row;")


def test_row_numbers_count_blank_lines_and_quoted_line_breaks() -> None:
    text = f'\n{HEADER}\n\n1,"Mug\n\nlarge","{A}\n{B}"\n\n \n2,Cup,ftp://c\n'

    assert problems(text) == [
        Problem(10, "Input Image Urls", "'ftp://c' is not an absolute http(s) URL")
    ]


def test_row_numbers_count_crlf_and_lone_cr_line_ends() -> None:
    text = f"{HEADER}\r\n\r\n1,Mug,{A}\r\r2,Cup,ftp://c\r\n"

    assert [p.row for p in problems(text)] == [5]


def test_problems_beyond_the_limit_are_counted_not_listed() -> None:
    text = HEADER + "\n" + "".join(f"{i},Mug,ftp://x\n" for i in range(1, 11))
    error = refusal(text, replace(DEFAULT_LIMITS, max_problems=3))

    assert error.message.startswith("10 problems in 10 rows")
    assert [p.row for p in error.problems] == [2, 3, 4, None]
    assert error.problems[-1] == Problem(None, None, "7 more problems")


def test_more_rows_than_allowed() -> None:
    text = HEADER + "\n" + "".join(f"{i},Mug,{A}\n" for i in range(1, 5))
    error = refusal(text, replace(DEFAULT_LIMITS, max_rows=3))

    assert error.code == "too_many_rows"
    assert "more than 3 data rows" in error.message
    assert [(p.row, p.column) for p in error.problems] == [(5, None)]
    assert "3" in error.problems[0].reason


def test_too_many_rows_wins_over_problems_in_rows() -> None:
    text = f"{HEADER}\n1,Mug,ftp://x\n2,Cup,{A}\n3,Pen,{B}\n"

    assert refusal(text, replace(DEFAULT_LIMITS, max_rows=2)).code == "too_many_rows"


def test_exactly_the_row_limit_is_accepted() -> None:
    text = HEADER + "\n" + "".join(f"{i},Mug,{A}\n" for i in range(1, 4)) + "\n\n"

    assert len(parse_text(text, replace(DEFAULT_LIMITS, max_rows=3)).rows) == 3


def test_csv_error_survives_pickling() -> None:
    error = refusal(f"{HEADER}\n1,Mug,ftp://a\n")
    copy = pickle.loads(pickle.dumps(error))

    assert (copy.code, copy.message, copy.problems) == (error.code, error.message, error.problems)


def outcome(data: bytes) -> str:
    try:
        result = parse(data, DEFAULT_LIMITS)
    except CsvError as error:
        return error.code
    return type(result).__name__


OUTCOMES = {
    "ParsedCsv",
    "not_csv",
    "empty_file",
    "missing_columns",
    "invalid_rows",
    "too_many_rows",
}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_raise_only_csv_error(data: bytes) -> None:
    assert outcome(data) in OUTCOMES


CSV_PIECES = [",", ";", "\t", '"', "\r", "\n", " ", "1", "Mug", A, "ftp://x", HEADER, "\xe9"]


@settings(max_examples=300, deadline=None)
@given(
    header=st.booleans(),
    pieces=st.lists(st.sampled_from(CSV_PIECES), max_size=60),
    encoding=st.sampled_from(["utf-8", "cp1252", "utf-8-sig"]),
)
def test_csv_like_text_raises_only_csv_error(
    header: bool, pieces: list[str], encoding: str
) -> None:
    text = (f"{HEADER}\n" if header else "") + "".join(pieces)
    assert outcome(text.encode(encoding)) in OUTCOMES


NAMES = (
    st.text(st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=30)
    .map(str.strip)
    .filter(bool)
)
URLS = st.builds(
    "https://{}.example.com/{}.jpg".format,
    st.from_regex(r"[a-z]{1,10}", fullmatch=True),
    st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True),
)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(NAMES, st.lists(URLS, min_size=1, max_size=4)), min_size=1, max_size=20
    ),
    delimiter=st.sampled_from([",", ";", "\t"]),
)
def test_any_well_formed_file_reads_back_as_written(
    rows: list[tuple[str, list[str]]], delimiter: str
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter)
    writer.writerow(["S. No", "Product Name", "Input Image Urls"])
    for n, (name, urls) in enumerate(rows, start=1):
        writer.writerow([str(n), name, ",".join(urls)])
    parsed = parse(buffer.getvalue().encode(), DEFAULT_LIMITS)
    assert [(row.serial, row.name, list(row.urls)) for row in parsed.rows] == [
        (str(n), name, urls) for n, (name, urls) in enumerate(rows, start=1)
    ]


# --- output ----------------------------------------------------------------------------------


def read_back(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


ROW = OutputRow(
    serial="1",
    name="Mug",
    input_urls=[A],
    output_urls=["http://localhost:8000/images/r/1.jpg"],
    extra=[],
    bytes_in=1000,
    bytes_out=400,
    errors=[],
)


def test_output_header() -> None:
    assert read_back(write_output(["Brand"], [])) == [
        [
            *OUTPUT_HEADER,
            "Brand",
            "Bytes In",
            "Bytes Out",
            "Errors",
            "Kept Originals",
            "Changed Images",
        ]
    ]


def test_with_a_profile_each_row_says_how_it_complies_in_the_last_column() -> None:
    rows = [
        replace(ROW, compliance="compliant"),
        replace(ROW, serial="2", compliance="not compliant: x"),
    ]
    lines = read_back(write_output([], rows, compliance=True))
    assert lines[0][-1] == "Compliance"
    assert [line[-1] for line in lines[1:]] == ["compliant", "not compliant: x"]
    assert "Compliance" not in read_back(write_output([], [ROW]))[0]
    with pytest.raises(ValueError, match="no compliance"):
        write_output([], [ROW], compliance=True)


def test_output_round_trip_keeps_places_of_failed_images() -> None:
    row = replace(
        ROW,
        serial="001",
        name='Mug, "large"',
        input_urls=[A, B, C],
        output_urls=["http://out/a.jpg", None, "http://out/c.jpg"],
        extra=["Acme", "9.99"],
        bytes_in=3000,
        bytes_out=900,
        errors=[f"{B}: http_error: HTTP 404"],
        kept_originals=[C],
        changed=[A],
    )

    lines = read_back(write_output(["Brand", "Price"], [row]))

    assert lines[1] == [
        "001",
        'Mug, "large"',
        f"{A},{B},{C}",
        "http://out/a.jpg,,http://out/c.jpg",
        "Acme",
        "9.99",
        "3000",
        "900",
        f"{B}: http_error: HTTP 404",
        C,
        A,
    ]


def test_output_errors_are_joined_with_semicolons() -> None:
    row = replace(
        ROW,
        input_urls=[A, B],
        output_urls=[None, None],
        errors=[f"{A}: timeout: no answer in 15 s", f"{B}: too_large: over 25 MiB"],
    )

    cells = read_back(write_output([], [row]))[1]

    assert cells[3] == ","
    assert cells[-3] == f"{A}: timeout: no answer in 15 s; {B}: too_large: over 25 MiB"
    assert cells[-2] == ""  # no original kept
    assert cells[-1] == ""  # nothing changed since the last request


def test_output_is_utf8_without_bom_with_crlf_line_ends() -> None:
    data = write_output([], [replace(ROW, name="Caf\u00e9"), replace(ROW, serial="2")])

    assert not data.startswith(b"\xef\xbb\xbf")
    assert "Caf\u00e9".encode() in data
    assert data.count(b"\r\n") == 3
    assert data.replace(b"\r\n", b"").count(b"\n") == 0


def test_output_rejects_output_urls_not_matching_input_urls() -> None:
    with pytest.raises(ValueError, match="output URLs"):
        write_output([], [replace(ROW, input_urls=[A, B], output_urls=["http://out/a.jpg"])])


def test_output_rejects_extra_values_not_matching_extra_columns() -> None:
    with pytest.raises(ValueError, match="extra"):
        write_output(["Brand"], [replace(ROW, extra=[])])


# --- files of any size, a piece at a time ------------------------------------------------------


def catalog(rows: int, name: str = "Mug") -> bytes:
    lines = (f'{n},{name} {n},"https://img.example.com/{n}/a.jpg,{B}"\n' for n in range(rows))
    return (f"{HEADER}\n" + "".join(lines)).encode()


def test_check_counts_what_rows_then_reads_one_at_a_time() -> None:
    file = io.BytesIO(catalog(5))

    assert csvio.check(file, DEFAULT_LIMITS) == CsvSummary((), row_count=5, image_count=10)
    assert [(row.line, row.serial) for row in csvio.rows(file)] == [
        (n + 2, str(n)) for n in range(5)
    ]
    assert [(row.line, row.serial) for row in csvio.rows(file, skip=3)] == [(5, "3"), (6, "4")]


def test_checking_a_file_holds_a_piece_of_it_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvio, "_READ_SIZE", 64 * 1024)
    data = catalog(30_000, name="Caf\u00e9")  # not ASCII: text of two bytes a character
    file = io.BytesIO(data)
    tracemalloc.start()
    try:
        summary = csvio.check(file, DEFAULT_LIMITS)
        rows = sum(1 for _ in csvio.rows(file))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert (summary.row_count, rows) == (30_000, 30_000)
    assert peak < len(data) / 4  # parse() of the same file holds several times its size


def test_a_character_split_between_two_pieces_is_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(csvio, "_READ_SIZE", 1024)
    head = f"{HEADER}\n1,".encode()
    name = b"x" * (1024 - len(head) - 1) + "\u00e9t\u00e9".encode()  # é's 2 bytes straddle 1024
    data = head + name + f",{A}\n".encode()

    [row] = csvio.rows(io.BytesIO(data))
    assert row.name.endswith("x\u00e9t\u00e9")
    assert csvio.check(io.BytesIO(data), DEFAULT_LIMITS).row_count == 1


def test_windows_1252_found_out_after_the_first_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvio, "_READ_SIZE", 1024)
    data = catalog(100) + f"101,Caf\u00e9,{A}\n".encode("cp1252")

    rows = list(csvio.rows(io.BytesIO(data)))
    assert csvio.check(io.BytesIO(data), DEFAULT_LIMITS).row_count == 101
    assert rows[-1].name == "Caf\u00e9"


def test_a_file_with_problems_everywhere_names_the_first_ones_and_counts_the_rest() -> None:
    data = catalog(5000).replace(b"https://img.example.com/", b"img.example.com/")
    with pytest.raises(CsvError) as caught:
        csvio.check(io.BytesIO(data), DEFAULT_LIMITS)

    problems = caught.value.problems
    assert len(problems) == DEFAULT_LIMITS.max_problems + 1
    assert problems[0] == Problem(
        2, "Input Image Urls", "'img.example.com/0/a.jpg' is not an absolute http(s) URL"
    )
    assert problems[-1] == Problem(
        None, None, f"{2 * 5000 - DEFAULT_LIMITS.max_problems} more problems"
    )
    assert caught.value.message.startswith("10000 problems in 5000 rows; first: row 2,")
