"""Geometry: sizes inside a box, never enlarged, and how far a JPEG may shrink as it loads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from imgcrunch.imaging.sizing import fit_inside, jpeg_shrink


def test_a_picture_fits_inside_its_box_keeping_its_aspect() -> None:
    assert fit_inside(1600, 1200, (800, 800)) == (800, 600)
    assert fit_inside(1200, 1600, (800, 800)) == (600, 800)
    assert fit_inside(1600, 1200, (None, 300)) == (400, 300)
    assert fit_inside(1600, 1200, (400, None)) == (400, 300)


def test_a_picture_is_never_enlarged() -> None:
    assert fit_inside(640, 480, (2000, 2000)) == (640, 480)
    assert fit_inside(640, 480, (None, None)) == (640, 480)


@given(
    st.integers(1, 20_000),
    st.integers(1, 20_000),
    st.one_of(st.none(), st.integers(1, 5_000)),
    st.one_of(st.none(), st.integers(1, 5_000)),
)
def test_the_fitted_size_is_inside_the_box_and_the_picture(
    width: int, height: int, box_width: int | None, box_height: int | None
) -> None:
    fitted = fit_inside(width, height, (box_width, box_height))
    assert 1 <= fitted[0] <= width
    assert 1 <= fitted[1] <= height
    assert box_width is None or fitted[0] <= box_width
    assert box_height is None or fitted[1] <= box_height


def test_a_jpeg_shrinks_as_far_as_the_target_allows() -> None:
    assert jpeg_shrink(1600, 1200, (200, 150)) == 8
    assert jpeg_shrink(1600, 1200, (201, 150)) == 4  # 1600 / 8 = 200 would be too small
    assert jpeg_shrink(1600, 1200, (800, 600)) == 2
    assert jpeg_shrink(1600, 1200, (1000, 750)) == 1
    # libjpeg rounds a scaled side up: 1601 / 8 gives 201.
    assert jpeg_shrink(1601, 1201, (201, 151)) == 8
