"""Download the ISIC Archive sources (MSK, UDA, SONIC) into the layout their adapter reads, with a
manifest of what was fetched and when.

    python tools/fetch_isic.py ROOT [--sources MSK,UDA,SONIC] [--collections MSK=66,67] [--isic isic]

Uses the Archive's own command-line client, isic-cli (``pip install isic-cli``; the ``isic``
command). For each source it finds the collection ids by name in ``isic collection list`` (MSK-1 ..
MSK-5 for MSK, UDA-1 and UDA-2 for UDA, SONIC for SONIC; ``--collections`` gives them by hand), runs
``isic image download --collections IDS ROOT/<SOURCE>``, which writes ``metadata.csv`` and one
``<isic_id>.<ext>`` per image (the adapter's layout, ``domgen/data/sources/isic.py``), renames
``.JPG``/``.jpeg`` files to the ``.jpg`` the adapter looks for, and writes ``ROOT/<SOURCE>/download.json``:
the UTC download time, the collection ids and names, the command, the client's version and the image
count. The Archive changes over time (see ``datasets/MSK.md``), so keep that file with the data, and
compare the counts with ``tools/check_table1.py``. A person runs this; the package never imports it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

# Source folder (the adapter's registered name) -> collection names on the Archive, as a regex.
PATTERNS = {"MSK": r"MSK-\d+", "UDA": r"UDA-\d+", "SONIC": r"SONIC"}
MANIFEST = "download.json"
_JPEG_SUFFIXES = {".JPG", ".jpeg", ".JPEG", ".Jpg"}


def run_isic(isic: str, args: list[str]) -> str:
    """Run the client (``isic`` or a path to it) and return its stdout; fail in one line otherwise."""
    cmd = [isic, *args]
    env = dict(os.environ, COLUMNS="400")  # isic-cli prints rich tables: wide enough that no name wraps
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise SystemExit(f"{isic}: not found; install the ISIC Archive client with `pip install isic-cli`") from None
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def parse_collection_list(text: str) -> list[tuple[int, str]]:
    """(id, name) per row of ``isic collection list`` (a table drawn with box characters or pipes)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line)]
        cells = cells[1:-1] if len(cells) > 2 else []
        if len(cells) >= 2 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1]))
    return rows


def pick_collections(listing: list[tuple[int, str]], source: str) -> list[tuple[int, str]]:
    """The collections named exactly for the source, optionally with ": description" (``MSK-1``,
    ``MSK-1: ...``; not ``MSK-1 (duplicates)``, ``ISIC 2017: MSK-1 subset`` or ``UDA-1``)."""
    pattern = re.compile(rf"{PATTERNS[source]}(:.*)?", re.I)
    return sorted((cid, name) for cid, name in listing if pattern.fullmatch(name.strip()))


def normalise_extensions(folder: Path) -> tuple[int, list[str]]:
    """Rename ``ISIC_*.JPG`` / ``.jpeg`` to ``.jpg``; return (renamed, other image files left as they are)."""
    renamed, other = 0, []
    for path in sorted(folder.glob("ISIC_*")):
        if path.suffix == ".jpg" or path.suffix == ".json":
            continue
        if path.suffix in _JPEG_SUFFIXES:
            path.rename(path.with_suffix(".jpg"))
            renamed += 1
        elif path.is_file():
            other.append(path.name)
    return renamed, other


def count_rows(metadata: Path) -> int:
    with open(metadata, newline="", encoding="utf8") as f:
        return sum(1 for _ in csv.DictReader(f))


def fetch_source(isic: str, root: Path, source: str, collections: list[tuple[int, str]], limit: int = 0) -> dict:
    """Download one source into ``root/source`` and write its manifest; return the manifest."""
    folder = root / source
    args = ["image", "download", "--collections", ",".join(str(cid) for cid, _ in collections)]
    args += ["--limit", str(limit)] if limit else []
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    run_isic(isic, [*args, str(folder)])
    if not (folder / "metadata.csv").is_file():
        raise SystemExit(f"{source}: the client wrote no {folder / 'metadata.csv'}; nothing for the adapter to read")
    renamed, other = normalise_extensions(folder)
    manifest = {
        "source": source,
        "downloaded_utc": started,
        "collections": [{"id": cid, "name": name} for cid, name in collections],
        "command": shlex.join([isic, *args, str(folder)]),
        "client_version": run_isic(isic, ["--version"]).strip(),
        "images": count_rows(folder / "metadata.csv"),
        "renamed_to_jpg": renamed,
        "not_jpeg": other,  # the adapter reads <isic_id>.jpg only: these are listed but not found
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def given_collections(items: list[str]) -> dict[str, list[int]]:
    """``["MSK=66,67", "UDA=70"]`` -> {"MSK": [66, 67], "UDA": [70]}."""
    out = {}
    for item in items:
        source, _, ids = item.partition("=")
        if source not in PATTERNS or not ids:
            raise SystemExit(f"--collections expects SOURCE=ID,ID with SOURCE in {', '.join(PATTERNS)}; got {item!r}")
        out[source] = [int(i) for i in ids.split(",") if i]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="the data root: each source goes into ROOT/<SOURCE>/")
    p.add_argument("--sources", default="MSK,UDA,SONIC", help="which of MSK, UDA, SONIC")
    p.add_argument("--collections", action="append", default=[], metavar="SOURCE=ID,ID",
                   help="collection ids by hand instead of by name from `isic collection list`")
    p.add_argument("--isic", default="isic", help="the isic-cli command (or its path)")
    p.add_argument("--limit", type=int, default=0, help="at most this many images per source (0: all; for a trial)")
    args = p.parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in sources if s not in PATTERNS]
    if unknown:
        raise SystemExit(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(PATTERNS)}")
    given = given_collections(args.collections)
    listing = parse_collection_list(run_isic(args.isic, ["collection", "list"])) if set(sources) - set(given) else []
    names = dict(listing)
    for source in sources:
        chosen = [(cid, names.get(cid, "")) for cid in given[source]] if source in given else pick_collections(listing, source)
        if not chosen:
            raise SystemExit(f"{source}: no collection named like {PATTERNS[source]!r} in `isic collection list`; "
                             f"pass --collections {source}=ID,ID")
        m = fetch_source(args.isic, Path(args.root), source, chosen, args.limit)
        picked = ", ".join(str(c["name"] or c["id"]) for c in m["collections"])
        print(f"{source}: {m['images']} images from collection(s) {picked} -> {Path(args.root) / source}"
              + (f" ({len(m['not_jpeg'])} not JPEG, see {MANIFEST})" if m["not_jpeg"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
