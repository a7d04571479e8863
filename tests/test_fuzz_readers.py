"""Property-based (Hypothesis): every metadata reader fed random and mutated files (truncated, wrong
encodings, BOMs, extra and missing fields, huge fields, NUL bytes, random bytes) either loads cleanly or
raises a domgen error with a message; never another exception, and never a half-written manifest."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from domgen.data.sources import SOURCES, derm7pt, ham10000, isic, metadata_csv, ph2
from domgen.data.sources.base import RECORD_COLUMNS, LoadResult
from domgen.data.splits import load_or_build_manifest
from domgen.data.writers import Item, write_source
from domgen.errors import DomgenError

TINY = np.full((8, 8, 3), 120, np.uint8)
# source, the metadata file its reader parses, a valid release to mutate (style for write_source)
READERS = {
    "HAM10000": (ham10000.METADATA, None, ["nv", "mel", "bcc"]),
    "Derm7pt": (derm7pt.METADATA, None, ["clark nevus", "clark nevus", "melanoma", "melanoma"]),
    "PH2 xlsx": (ph2.XLSX, "xlsx", ["Common Nevus", "Melanoma", "Atypical Nevus"]),
    "PH2 txt": (ph2.TXT, "txt", ["Common Nevus", "Melanoma", "Atypical Nevus"]),
    "MSK": (isic.METADATA, None, ["nevus", "melanoma", "dermatofibroma"]),
}

# One edit of the file's bytes: (kind, where as a fraction of the length, payload).
EDITS = st.tuples(
    st.sampled_from(["truncate", "insert", "overwrite", "bom", "nul", "latin1", "utf16", "extra_field",
                     "drop_field", "huge_field", "random"]),
    st.floats(0, 1),
    st.binary(min_size=0, max_size=40),
)


def _items(source: str, diagnoses: list[str]) -> list[Item]:
    if source == "Derm7pt":  # a case is two images (clinic, derm) of one group
        return [Item(TINY, d, str(i // 2), f"c{i // 2}_{m}", {"modality": m}) for i, (d, m) in
                enumerate(zip(diagnoses, ["clinic", "derm"] * len(diagnoses)))]
    meta = {"lesion_id": "L"} if source == "MSK" else {}
    return [Item(TINY, d, f"G{i}", f"IMD00{i + 1}" if source == "PH2" else f"ISIC_{i}", meta) for i, d in enumerate(diagnoses)]


def _mutate(data: bytes, edits) -> bytes:
    for kind, where, payload in edits:
        at = int(where * len(data))
        if kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + payload + data[at:]
        elif kind == "overwrite":
            data = data[:at] + payload + data[at + len(payload):]
        elif kind == "bom":
            data = b"\xef\xbb\xbf" + data
        elif kind == "nul":
            data = data[:at] + b"\x00" + data[at:]
        elif kind == "latin1":
            data = data[:at] + "é,ü".encode("latin-1") + data[at:]
        elif kind == "utf16":
            data = data.decode("utf-8", "replace").encode("utf-16")
        elif kind == "extra_field":
            end = data.find(b"\n", at)
            data = data[:end] + b",extra" + data[end:] if end >= 0 else data + b",extra"
        elif kind == "drop_field":
            comma = data.find(b",", at)
            data = data[:comma] + data[comma + 1:] if comma >= 0 else data
        elif kind == "huge_field":
            data = data[:at] + b"x" * 200_000 + data[at:]
        else:
            data = payload * 50
    return data


def _check(source_key: str, edits) -> None:
    name = source_key.split()[0]
    meta_file, style, diagnoses = READERS[source_key]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        write_source(name, folder, _items(name, diagnoses), style=style)
        target = folder / meta_file
        target.write_bytes(_mutate(target.read_bytes(), edits))
        cache = Path(tmp) / "cache"
        try:
            result = SOURCES.get(name).load(folder, skip_missing=True)
        except DomgenError as err:
            assert str(err).strip(), "an error without a message"
            return
        assert isinstance(result, LoadResult) and list(result.records.columns[:5]) == ["path", "label", "domain", "group", "image_id"]
        if len(result.records):
            manifest = load_or_build_manifest(result.records, cache, seed=0)
            assert len(manifest) == len(result.records)
            written = list((cache / "manifests").glob("*.csv"))
            assert len(written) == 1 and len(pd.read_csv(written[0])) == len(result.records)  # whole, not half
        assert not list(cache.rglob("*.tmp"))


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.mark.parametrize("source_key", sorted(READERS))
def test_mutated_metadata_loads_or_fails_cleanly(source_key):
    @FUZZ
    @given(edits=st.lists(EDITS, min_size=1, max_size=3))
    def run(edits):
        _check(source_key, edits)

    run()


@pytest.mark.parametrize("source_key", sorted(READERS))
def test_random_bytes_as_metadata_fail_cleanly(source_key):
    @settings(max_examples=10, deadline=None, database=None)
    @given(data=st.binary(max_size=2000))
    def run(data):
        _check(source_key, [("random", 0.0, data[:40] or b"\x00")])

    run()


# --- the generic metadata.csv reader (data.layout=metadata_csv), fed the same mutations --------------

def _check_metadata_csv(edits) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        rows = [{"path": f"im/{i}.png", "label": ("benign", "malignant")[i % 2], "domain": ("a", "b")[i % 2],
                 "patient": f"P{i // 2}"} for i in range(4)]
        for r in rows:
            (folder / "im").mkdir(parents=True, exist_ok=True)
            Image.fromarray(TINY).save(folder / r["path"])
        listing = folder / metadata_csv.METADATA
        pd.DataFrame(rows).to_csv(listing, index=False)
        listing.write_bytes(_mutate(listing.read_bytes(), edits))
        cache = Path(tmp) / "cache"
        try:
            results = metadata_csv.MetadataCsv().load_root(folder, skip_missing=True)
        except DomgenError as err:
            assert str(err).strip(), "an error without a message"
            return
        for result in results.values():
            assert isinstance(result, LoadResult) and list(result.records.columns[:5]) == RECORD_COLUMNS
            assert set(result.records["domain"]) <= {result.domain} and result.domain.strip()
        records = pd.concat([r.records for r in results.values()], ignore_index=True) if results else pd.DataFrame()
        if len(records):
            manifest = load_or_build_manifest(records, cache, seed=0)
            assert len(manifest) == len(records)
        assert not list(cache.rglob("*.tmp"))


def test_mutated_metadata_csv_loads_or_fails_cleanly():
    @FUZZ
    @given(edits=st.lists(EDITS, min_size=1, max_size=3))
    def run(edits):
        _check_metadata_csv(edits)

    run()


def test_random_bytes_as_metadata_csv_fail_cleanly():
    @settings(max_examples=10, deadline=None, database=None)
    @given(data=st.binary(max_size=2000))
    def run(data):
        _check_metadata_csv([("random", 0.0, data[:40] or b"\x00")])

    run()
