"""The variants spec: what a user types in a shell or a form, and what is refused, by name."""

from __future__ import annotations

import json

import pytest

from imgcrunch.imaging import DEFAULT, Effort, Fit, Format, Variant, VariantsError
from imgcrunch.imaging.variants import from_json, parse, to_json

PIXELS = 50_000_000


def test_the_catalog_set_as_typed_in_a_shell() -> None:
    zoom, listing, thumb = parse(
        "zoom=2000:jpeg, listing=800:avif, thumb=200x200:pad:webp", max_pixels=PIXELS
    )
    assert zoom == Variant(name="zoom", width=2000, height=2000, format=Format.JPEG)
    assert listing == Variant(name="listing", width=800, height=800, format=Format.AVIF)
    assert thumb == Variant(name="thumb", width=200, height=200, fit=Fit.PAD, format=Format.WEBP)
    assert (listing.column, thumb.column) == ("Listing Image Urls", "Thumb Image Urls")


def test_parts_come_in_any_order_with_quality_effort_and_one_sided_boxes() -> None:
    (a, b, c) = parse("a=webp:max:q60:1200x, b=x300, c=avif", max_pixels=PIXELS)
    assert (a.width, a.height, a.format, a.quality, a.effort) == (
        1200,
        None,
        Format.WEBP,
        60,
        Effort.MAX,
    )
    assert (b.width, b.height, b.format, b.fit) == (None, 300, Format.JPEG, Fit.INSIDE)
    assert (c.width, c.height, c.quality, c.effort) == (None, None, None, None)


def test_case_and_spaces_do_not_matter() -> None:
    assert parse(" Zoom = 2000 : JPEG ,thumb=200X200:PAD ", max_pixels=PIXELS) == parse(
        "zoom=2000:jpeg, thumb=200x200:pad", max_pixels=PIXELS
    )


def test_nothing_given_is_the_default_one_jpeg_at_the_original_size() -> None:
    assert parse(None, max_pixels=PIXELS) == parse("  ", max_pixels=PIXELS) == DEFAULT
    (default,) = DEFAULT
    assert (default.width, default.height, default.format) == (None, None, Format.JPEG)
    assert to_json(DEFAULT) is None  # a plain request stores what it always stored
    assert from_json(None) == DEFAULT


def test_the_json_form_says_the_same() -> None:
    text = json.dumps(
        [
            {"name": "zoom", "width": 2000, "height": 2000, "format": "jpeg"},
            {"name": "thumb", "width": 200, "height": 200, "fit": "pad", "format": "webp",
             "quality": 70, "effort": "max"},
        ]
    )  # fmt: skip
    assert parse(text, max_pixels=PIXELS) == parse(
        "zoom=2000:jpeg, thumb=200x200:pad:webp:q70:max", max_pixels=PIXELS
    )
    assert parse('{"name": "tile", "width": 64}', max_pixels=PIXELS) == (
        Variant(name="tile", width=64),
    )


def test_a_byte_cap_is_written_in_decimal_units() -> None:
    made = parse("a=150kb, b=webp:2MB, c=80500b", max_pixels=PIXELS)
    assert [variant.max_bytes for variant in made] == [150_000, 2_000_000, 80_500]
    assert [variant.spec() for variant in made] == [
        "a=inside:jpeg:150kb",
        "b=inside:webp:2mb",
        "c=inside:jpeg:80500b",
    ]
    assert parse('{"name": "a", "max_bytes": 150000}', max_pixels=PIXELS) == made[:1]
    # Stored only where given: a variant stored before byte caps is read back the same.
    assert "max_bytes" not in Variant(name="a").to_json()


def test_the_text_form_and_the_stored_form_give_back_the_same_variants() -> None:
    made = parse("z=2000x:avif:max, t=64x48:pad:webp:q30:20kb, o=jpeg", max_pixels=PIXELS)
    assert parse(", ".join(v.spec() for v in made), max_pixels=PIXELS) == made
    assert from_json(json.loads(json.dumps(to_json(made)))) == made


@pytest.mark.parametrize(
    ("spec", "part", "reason"),
    [
        ("zoom=2000:jpeg, zoom=800:avif", "zoom", "given twice"),
        ("zoom=2000:gif", "zoom=2000:gif", "'gif' is none of"),
        ("thumb=0x200", "thumb=0x200", "a side of 0"),
        ("thumb=200x0:pad", "thumb=200x0:pad", "a side of 0"),
        ("huge=10000x10000", "huge=10000x10000", "megapixels; the limit is 50.0"),
        ("wide=20000:webp", "wide=20000:webp", "webp images are at most 16383"),
        ("tile=200x:pad", "tile=200x:pad", "pad makes exactly the box"),
        ("a=q0", "a=q0", "quality 0 is not within 1..100"),
        ("a=q101", "a=q101", "quality 101"),
        ("a=jpeg:webp", "a=jpeg:webp", "gives its format a second time"),
        ("a=100:200", "a=100:200", "gives its box a second time"),
        ("zoom 2000", "zoom 2000", "a name, '='"),
        ("2x=100", "2x=100", "must start with a letter"),
        ("a=100,,b=200", "", "an empty variant"),
        ("a=100:", "a=100:", "an empty part"),
        ("a=jpeg, output=webp", "output", "is one of the output's own"),
        ("a=1kb", "a=1kb", "under the least any image takes, 2000"),
        ("a=10kb:20kb", "a=10kb:20kb", "gives its max_bytes a second time"),
        ("a=10gb", "a=10gb", "or a byte cap (150kb, 2mb)"),
    ],
)
def test_a_bad_spec_names_the_part_at_fault(spec: str, part: str, reason: str) -> None:
    with pytest.raises(VariantsError) as refused:
        parse(spec, max_pixels=PIXELS)
    assert refused.value.part == part
    assert reason in refused.value.reason


def test_more_than_eight_variants_are_refused() -> None:
    nine = ", ".join(f"v{n}={100 + n}" for n in range(9))
    with pytest.raises(VariantsError, match="9 variants; at most 8"):
        parse(nine, max_pixels=PIXELS)
    assert len(parse(nine.rsplit(",", 1)[0], max_pixels=PIXELS)) == 8


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[", "not valid JSON"),
        ('{"name": "a", "quality": 0}', "quality 0 is not within"),  # one object alone
        ('["a"]', "a list of objects"),
        ('[{"width": 100}]', "'name' is required"),
        ('[{"name": "a", "format": "png"}]', "format 'png' is unknown"),
        ('[{"name": "a", "width": "100"}]', "width must be a whole number"),
        ('[{"name": "a", "width": true}]', "width must be a whole number"),
        ('[{"name": "a", "colour": "red"}]', "unknown key 'colour'"),
        ('[{"name": "a", "max_bytes": "1mb"}]', "max_bytes must be a whole number"),
    ],
)
def test_a_bad_json_spec_says_why(text: str, reason: str) -> None:
    with pytest.raises(VariantsError) as refused:
        parse(text, max_pixels=PIXELS)
    assert reason in str(refused.value)
