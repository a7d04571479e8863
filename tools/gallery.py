"""A domain x class contact sheet of a data root: one row per source, one column per class, a few
thumbnails in each cell and an empty (grey) cell where a source has no image of that class.

    python tools/gallery.py OUT.png [--data-root ROOT] [--per-cell 3] [--thumb 64] [--seed 0]

With no ``--data-root`` (and no ``$DOMGEN_DATA``) it shows the synthetic benchmark, so a look at the
sheet says at once what the domain shift and the domain-class imbalance look like. Thumbnails are a
seeded draw from each cell, so the same command gives the same sheet. A person runs this; the package
never imports it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND, EMPTY, INK = (255, 255, 255), (200, 200, 200), (0, 0, 0)
LABEL_W, HEADER_H, GAP = 48, 16, 2  # row labels, column labels, space between cells (pixels)


@dataclass
class Sheet:
    image: Image.Image
    domains: list[str]
    classes: list[str]
    shown: dict[tuple[str, str], int]  # (domain, class) -> thumbnails drawn (0: an empty cell)

    def cell_box(self, domain: str, cls: str, per_cell: int, thumb: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a cell in the image."""
        left = LABEL_W + self.classes.index(cls) * (per_cell * thumb + GAP)
        top = HEADER_H + self.domains.index(domain) * (thumb + GAP)
        return left, top, left + per_cell * thumb, top + thumb


def sheet_size(n_domains: int, n_classes: int, per_cell: int, thumb: int) -> tuple[int, int]:
    """(width, height) of the sheet."""
    return LABEL_W + n_classes * (per_cell * thumb + GAP), HEADER_H + n_domains * (thumb + GAP)


def thumbnail(path: str, thumb: int) -> Image.Image:
    """The image squashed to ``thumb x thumb`` (as the pipeline's resize squashes it)."""
    with Image.open(path) as img:
        return img.convert("RGB").resize((thumb, thumb), Image.Resampling.BILINEAR)


def contact_sheet(records, domains: list[str], classes: list[str], per_cell: int = 3, thumb: int = 64,
                  seed: int = 0) -> Sheet:
    """``records``: a frame with ``domain``, ``label`` and ``path`` (a catalog's records)."""
    image = Image.new("RGB", sheet_size(len(domains), len(classes), per_cell, thumb), BACKGROUND)
    sheet = Sheet(image, list(domains), list(classes), {})
    draw = ImageDraw.Draw(image)
    for j, cls in enumerate(classes):
        draw.text((LABEL_W + j * (per_cell * thumb + GAP) + 2, 2), cls, fill=INK)
    for i, domain in enumerate(domains):
        draw.text((2, HEADER_H + i * (thumb + GAP) + thumb // 2 - 5), domain, fill=INK)
        for cls in classes:
            paths = sorted(records.loc[(records["domain"] == domain) & (records["label"] == cls), "path"])
            rng = np.random.default_rng([seed, i, classes.index(cls)])
            chosen = [paths[k] for k in sorted(rng.choice(len(paths), min(per_cell, len(paths)), replace=False))]
            left, top, right, bottom = sheet.cell_box(domain, cls, per_cell, thumb)
            if not chosen:
                draw.rectangle((left, top, right - 1, bottom - 1), fill=EMPTY)
            for k, path in enumerate(chosen):
                image.paste(thumbnail(path, thumb), (left + k * thumb, top))
            sheet.shown[(domain, cls)] = len(chosen)
    return sheet


def main(argv: list[str] | None = None) -> int:
    from domgen.config import DataConfig
    from domgen.data.catalog import load_catalog
    from domgen.data.labels import CLASSES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the PNG to write")
    p.add_argument("--data-root", default="", help="folder with one sub-folder per source (default: $DOMGEN_DATA, else synthetic)")
    p.add_argument("--cache-dir", default="", help="where the synthetic benchmark is (default: $DOMGEN_CACHE or ~/.cache/domgen)")
    p.add_argument("--scale", type=float, default=1.0, help="size of the synthetic benchmark")
    p.add_argument("--per-cell", type=int, default=3, help="thumbnails per domain x class cell")
    p.add_argument("--thumb", type=int, default=64, help="thumbnail side in pixels")
    p.add_argument("--seed", type=int, default=0, help="which images each cell shows")
    args = p.parse_args(argv)
    catalog = load_catalog(DataConfig(root=args.data_root, cache_dir=args.cache_dir, synthetic_scale=args.scale))
    sheet = contact_sheet(catalog.records(), catalog.domains, list(CLASSES), args.per_cell, args.thumb, args.seed)
    sheet.image.save(args.out)
    empty = [f"{d}/{c}" for (d, c), n in sheet.shown.items() if n == 0]
    print(f"wrote {args.out} ({sheet.image.width}x{sheet.image.height}, {len(sheet.domains)} sources x "
          f"{len(sheet.classes)} classes); empty cells: {', '.join(empty) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
