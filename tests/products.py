"""Input CSVs, as a catalog team writes them."""

from __future__ import annotations

from pathlib import Path

HEADER = "S. No,Product Name,Input Image Urls\n"


def products_csv(urls: list[str]) -> str:
    """A product of three images per three URLs."""
    rows = "".join(
        f'{n},Product {n},"{",".join(urls[3 * n : 3 * n + 3])}"\n' for n in range(len(urls) // 3)
    )
    return HEADER + rows


def write_products(folder: Path, *rows: str) -> Path:
    """`folder/products.csv`: the header, then each row as given (`1,Mug,"url,url"`)."""
    path = folder / "products.csv"
    path.write_text(HEADER + "".join(f"{row}\n" for row in rows))
    return path
