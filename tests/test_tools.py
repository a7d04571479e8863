"""tools/: what a person runs, tested offline. fetch_isic against a fake isic-cli (a script that answers
like the real client and writes its layout), check_table1 on the cards and the smoke benchmark, gallery
on the smoke benchmark."""

from __future__ import annotations

import datetime
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from domgen import run

REPO = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    """Import ``tools/<name>.py`` (tools/ is not a package: the package never imports it)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


fetch_isic, check_table1, gallery = load_tool("fetch_isic"), load_tool("check_table1"), load_tool("gallery")

# ---- fetch_isic ------------------------------------------------------------------------------------
FAKE_ISIC = '''#!{python}
"""Answers like isic-cli: --version, `collection list` (a rich table), `image download`."""
import json, sys
from pathlib import Path
from PIL import Image

Path({log!r}).open("a").write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args == ["--version"]:
    print("isic, version 12.0.0")
elif args[:2] == ["collection", "list"]:
    print("┏━━━━┳━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━┓")
    print("┃ ID ┃ Name               ┃ Public ┃")
    print("┡━━━━╇━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━┩")
    for cid, name in [(11, "MSK-1"), (12, "MSK-2"), (13, "MSK-2 (duplicates)"), (20, "UDA-1"), (21, "UDA-2"),
                      (30, "SONIC"), (40, "ISIC 2017: MSK-1 subset")]:
        print(f"│ {{cid:<2}} │ {{name:<18}} │ True   │")
    print("└────┴────────────────────┴────────┘")
elif args[:2] == ["image", "download"]:
    ids, out = args[args.index("--collections") + 1], Path(args[-1])
    out.mkdir(parents=True, exist_ok=True)
    rows = ["isic_id,diagnosis,lesion_id"]
    for k, cid in enumerate(ids.split(",")):
        for j, diagnosis in enumerate(["nevus", "melanoma", "nevus"]):
            isic_id = f"ISIC_{{int(cid) * 10 + j:07d}}"
            Image.new("RGB", (12, 9), (40 * j, 80, 120)).save(out / f"{{isic_id}}.{{'JPG' if k == 0 else 'jpg'}}", "JPEG")
            rows.append(f"{{isic_id}},{{diagnosis}},L{{cid}}{{j}}")
    (out / "metadata.csv").write_text("\\n".join(rows) + "\\n")
else:
    sys.exit("unknown command")
'''


@pytest.fixture
def fake_isic(tmp_path) -> tuple[Path, Path]:
    log = tmp_path / "isic-calls.jsonl"
    script = tmp_path / "isic"
    script.write_text(FAKE_ISIC.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    return script, log


def test_collection_names_pick_exactly_the_sources_collections():
    listing = [(11, "MSK-1"), (12, "MSK-2: Memorial Sloan Kettering"), (13, "MSK-2 duplicates"), (20, "UDA-1"),
               (30, "SONIC"), (40, "ISIC 2017: MSK-1 subset")]
    assert fetch_isic.pick_collections(listing, "MSK") == [(11, "MSK-1"), (12, "MSK-2: Memorial Sloan Kettering")]
    assert fetch_isic.pick_collections(listing, "UDA") == [(20, "UDA-1")]
    assert fetch_isic.pick_collections(listing, "SONIC") == [(30, "SONIC")]
    table = "┃ ID ┃ Name ┃\n│ 11 │ MSK-1 │\n│    │ (wrapped) │\n| 7 | UDA-1 |"
    assert fetch_isic.parse_collection_list(table) == [(11, "MSK-1"), (7, "UDA-1")]


def test_fetch_writes_the_adapters_layout_and_a_manifest(fake_isic, tmp_path):
    script, log = fake_isic
    root = tmp_path / "data"
    assert fetch_isic.main([str(root), "--sources", "MSK,UDA", "--isic", str(script)]) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    downloads = [c for c in calls if c[:2] == ["image", "download"]]
    assert downloads == [["image", "download", "--collections", "11,12", str(root / "MSK")],
                         ["image", "download", "--collections", "20,21", str(root / "UDA")]]
    msk = json.loads((root / "MSK" / "download.json").read_text())
    assert msk["collections"] == [{"id": 11, "name": "MSK-1"}, {"id": 12, "name": "MSK-2"}]
    assert msk["images"] == 6 and msk["renamed_to_jpg"] == 3 and msk["not_jpeg"] == []
    assert msk["client_version"] == "isic, version 12.0.0"
    when = datetime.datetime.fromisoformat(msk["downloaded_utc"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 600
    assert sorted(p.name for p in (root / "MSK").glob("ISIC_*")) == [f"ISIC_{n:07d}.jpg" for n in (110, 111, 112, 120, 121, 122)]
    # the adapters read what was written: summary counts the images by class
    done = subprocess.run([sys.executable, "-m", "domgen.run", "summary", "--json", "--data-root", str(root)],
                          capture_output=True, text=True, check=True)
    counts = json.loads(done.stdout)
    assert set(counts) == {"MSK", "UDA"}
    assert counts["MSK"]["nv"] == 4 and counts["MSK"]["mel"] == 2 and sum(counts["UDA"].values()) == 6


def test_fetch_by_hand_given_ids_and_a_missing_client_fail_or_work_in_one_line(fake_isic, tmp_path):
    script, log = fake_isic
    fetch_isic.main([str(tmp_path / "d"), "--sources", "SONIC", "--collections", "SONIC=30", "--isic", str(script)])
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert ["collection", "list"] not in calls  # ids given: the listing is not asked for
    assert json.loads((tmp_path / "d" / "SONIC" / "download.json").read_text())["collections"] == [{"id": 30, "name": ""}]
    with pytest.raises(SystemExit, match="pip install isic-cli"):
        fetch_isic.main([str(tmp_path / "e"), "--sources", "UDA", "--isic", str(tmp_path / "no-such-isic")])
    with pytest.raises(SystemExit, match="unknown source"):
        fetch_isic.main([str(tmp_path / "e"), "--sources", "HAM"])


# ---- check_table1 ----------------------------------------------------------------------------------
TABLE_CARD = """# Some (domain code `AAA`)

| nv | mel | bcc | df | bkl | vasc | akiec | total |
|---:|---:|---:|---:|---:|---:|---:|---:|
| 10 | 5 | 0 | 0 | 1 | 0 | 0 | 16 |
"""
PROSE_CARD = """# Other (domain code `BBB`)

**Table 1.** 30 images after mapping: nv 20, mel 10, and no other class (compare with `summary`).
"""
TOTAL_CARD = "# Third (domain code `CCC`)\n\n**Table 1.** 1,200 images in total, essentially all nevi.\n"


def test_cards_are_read_as_tables_prose_or_totals():
    a = check_table1.parse_card(TABLE_CARD)
    assert (a.code, a.counts, a.total) == ("AAA", dict(nv=10, mel=5, bcc=0, df=0, bkl=1, vasc=0, akiec=0), 16)
    b = check_table1.parse_card(PROSE_CARD)
    assert (b.code, b.counts, b.total) == ("BBB", dict(nv=20, mel=10, bcc=0, df=0, bkl=0, vasc=0, akiec=0), 30)
    c = check_table1.parse_card(TOTAL_CARD)
    assert (c.counts, c.total) == ({}, 1200)
    assert check_table1.parse_card("# synthetic\n\nno code here") is None
    cards = check_table1.read_cards(REPO / "datasets")
    assert cards["HAM"].counts["nv"] == 6705 and cards["HAM"].total == 10015
    assert cards["MSK"].counts == dict(nv=2241, mel=826, bcc=32, df=452, bkl=0, vasc=0, akiec=0)
    assert cards["UDA"].counts["bcc"] == 0 and cards["SON"].total == 9251 and set(cards) == {
        "HAM", "DMF", "D7P", "MSK", "UDA", "PH2", "SON"}


def test_mismatch_report_names_each_differing_count(tmp_path):
    for name, text in (("a.md", TABLE_CARD), ("b.md", PROSE_CARD), ("c.md", TOTAL_CARD)):
        (tmp_path / name).write_text(text)
    counts = {"AAA": dict(nv=10, mel=5, bcc=0, df=0, bkl=1, vasc=0, akiec=0),
              "BBB": dict(nv=20, mel=9, bcc=2, df=0, bkl=0, vasc=0, akiec=0), "ZZZ": dict(nv=1)}
    lines, bad = check_table1.compare(counts, check_table1.read_cards(tmp_path))
    assert bad == 1
    assert lines == ["AAA: matches a.md (16 images)",
                     "BBB: differs: mel 9 (card 10), bcc 2 (card 0), total 31 (card 30)",
                     "CCC: not in the data (skipped); c.md quotes 1200 images",
                     "ZZZ: no card quotes its counts"]
    summary = tmp_path / "counts.json"
    summary.write_text(json.dumps(counts))
    assert check_table1.main(["--summary", str(summary), "--cards", str(tmp_path)]) == 1
    summary.write_text(json.dumps({"AAA": counts["AAA"]}))
    assert check_table1.main(["--summary", str(summary), "--cards", str(tmp_path)]) == 0


def test_the_smoke_benchmark_is_reported_against_the_cards(smoke_cache, capsys):
    """The synthetic benchmark is Table 1 scaled down: every source differs, and the report says by how much."""
    assert run.main(["summary", "--json", "--cache-dir", str(smoke_cache), "--scale", "0.25"]) == 0
    counts = json.loads(capsys.readouterr().out)
    lines, bad = check_table1.compare(counts, check_table1.read_cards(REPO / "datasets"))
    assert bad == 7
    uda = counts["UDA"]
    assert f"UDA: differs: nv {uda['nv']} (card 408), mel {uda['mel']} (card 193), total {sum(uda.values())} (card 601)" in lines
    assert f"SON: differs: total {sum(counts['SON'].values())} (card 9251)" in lines


# ---- gallery ---------------------------------------------------------------------------------------
def test_gallery_of_the_smoke_benchmark(smoke_cache, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "sheet.png"
    assert gallery.main([str(out), "--cache-dir", str(smoke_cache), "--scale", "0.25", "--per-cell", "2", "--thumb", "20"]) == 0
    assert run.main(["summary", "--json", "--cache-dir", str(smoke_cache), "--scale", "0.25"]) == 0
    counts = json.loads(capsys.readouterr().out.splitlines()[-1])
    img = Image.open(out)
    # 7 sources x 7 classes, 2 thumbnails of 20 px a cell: 48 + 7 x (40 + 2) wide, 16 + 7 x (20 + 2) high
    assert img.size == (48 + 7 * 42, 16 + 7 * 22) == gallery.sheet_size(7, 7, 2, 20)
    empty = {(d, c) for d, row in counts.items() for c, n in row.items() if n == 0}
    assert ("SON", "mel") in empty and ("UDA", "bcc") in empty and ("HAM", "nv") not in empty
    pixels = np.asarray(img.convert("RGB"))
    sheet = gallery.Sheet(img, list(counts), list(counts["HAM"]), {})
    for d in counts:
        for c in counts[d]:
            left, top, right, bottom = sheet.cell_box(d, c, 2, 20)
            cell = pixels[top:bottom, left:right]
            grey = bool((cell == gallery.EMPTY).all())
            assert grey == ((d, c) in empty), (d, c)  # an empty cell is all grey, a filled one is not
    # a cell with one image shows one thumbnail and leaves the second slot white
    one = [(d, c) for d, row in counts.items() for c, n in row.items() if n == 1]
    for d, c in one:
        left, top, _, bottom = sheet.cell_box(d, c, 2, 20)
        assert (pixels[top:bottom, left + 20:left + 40] == gallery.BACKGROUND).all()
