"""The two generic layouts (a folder with metadata.csv; DomainBed's DOMAIN/CLASS folders) read exactly,
fail on the same bad inputs as the native adapters with messages naming the file (and line), and run
through the same catalog, splits and engine."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from domgen.config import DataConfig
from domgen.data.catalog import dropped_report, load_catalog, summary_table
from domgen.data.label_space import LABEL_SPACES, LabelSpace
from domgen.data.sources import DataLayoutError
from domgen.algorithms import ALGORITHMS
from domgen.data.sources.domain_folders import DomainFolders
from domgen.data.sources.metadata_csv import LAYOUT as CSV_LAYOUT
from domgen.data.sources.metadata_csv import MetadataCsv
from domgen.engine.logging import read_results
from domgen.data.run_data import prepare_data
from domgen.runs.registry import resolve_config
from domgen.runs.train import run_train


def _image(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


# A hospital-style export: two sites, three labels, patients with two images each (the group).
ROWS = [{"path": f"img/{i:02d}.png", "label": ("benign", "malignant", "benign", "uncertain")[i % 4],
         "domain": ("site_a", "site_b")[i // 6], "patient": f"P{i // 2}", "skin": ("I", "II", "III")[i % 3]}
        for i in range(12)]


def csv_root(tmp_path: Path, rows=ROWS) -> Path:
    root = tmp_path / "export"
    for i, r in enumerate(rows):
        _image(root / r["path"], 20 * i)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def folders_root(tmp_path: Path) -> Path:
    """PACS in miniature: 3 domains x 3 classes x 4 images, plus the clutter real folders hold."""
    root = tmp_path / "pacs"
    for d, domain in enumerate(("art_painting", "photo", "sketch")):
        for c, cls in enumerate(("dog", "giraffe", "house")):
            for i in range(4):
                _image(root / domain / cls / f"pic_{i:03d}.jpg", 40 * c + 10 * i + d)
    (root / "photo" / "dog" / "Thumbs.db").write_bytes(b"\0\1")  # not an image: ignored
    (root / "sketch" / ".DS_Store").write_bytes(b"\0")  # hidden: ignored
    (root / "README.txt").write_text("PACS")  # a file beside the domain folders: ignored
    return root


# --- metadata.csv ------------------------------------------------------------------------------------

def test_metadata_csv_round_trip_groups_by_patient(tmp_path):
    results = MetadataCsv().load_root(csv_root(tmp_path))
    assert list(results) == ["site_a", "site_b"]
    a = results["site_a"].records
    assert list(a.columns[:5]) == ["path", "label", "domain", "group", "image_id"] and "skin" in a.columns
    assert list(zip(a["image_id"], a["label"], a["group"]))[:3] == [("00", "benign", "P0"), ("01", "malignant", "P0"),
                                                                   ("02", "benign", "P1")]
    assert Counter(results["site_b"].records["label"]) == Counter(benign=3, malignant=1, uncertain=2)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in a["path"])


def test_metadata_csv_group_beats_patient_beats_image(tmp_path):
    rows = [dict(ROWS[0], group="L1"), dict(ROWS[1], patient=""), dict(ROWS[2])]
    rec = MetadataCsv().load_root(csv_root(tmp_path, rows))["site_a"].records
    assert list(rec["group"]) == ["L1", "img/01.png", "P1"]


def test_metadata_csv_missing_file_names_it_and_the_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError) as err:
        MetadataCsv().load_root(tmp_path / "empty")
    assert str(err.value) == f"metadata_csv: metadata file {tmp_path / 'empty' / 'metadata.csv'} not found. Expected layout: {CSV_LAYOUT}"


def test_metadata_csv_missing_column_is_named(tmp_path):
    root = csv_root(tmp_path, [{k: v for k, v in r.items() if k != "domain"} for r in ROWS])
    with pytest.raises(DataLayoutError, match=r"metadata_csv: .*metadata.csv lacks column\(s\) domain \(has path, label, patient, skin\)"):
        MetadataCsv().load_root(root)


def test_metadata_csv_empty_cell_names_file_and_line(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[4]["label"] = " "
    root = csv_root(tmp_path, rows)
    with pytest.raises(DataLayoutError, match=rf"{root / 'metadata.csv'} line 6: empty 'label' \(1 row\(s\)\)"):
        MetadataCsv().load_root(root)


def test_metadata_csv_row_with_extra_field_names_the_line(tmp_path):
    root = csv_root(tmp_path)
    lines = (root / "metadata.csv").read_text().splitlines()
    lines[3] += ",surplus"
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataLayoutError, match=r"metadata.csv line 4: 6 fields where the header has 5"):
        MetadataCsv().load_root(root)


def test_metadata_csv_repeated_path_names_both_lines(tmp_path):
    rows = ROWS + [dict(ROWS[3], domain="site_b")]
    with pytest.raises(DataLayoutError, match=r"lists 'img/03.png' more than once \(lines 5, 14\)"):
        MetadataCsv().load_root(csv_root(tmp_path, rows))


@pytest.mark.parametrize("domain", ["all", "None", "a,b"])
def test_metadata_csv_refuses_domain_names_tables_cannot_hold(tmp_path, domain):
    rows = [dict(r, domain=domain) if i == 0 else r for i, r in enumerate(ROWS)]
    with pytest.raises(DataLayoutError, match=f"domain name {domain!r} is reserved or holds a comma"):
        MetadataCsv().load_root(csv_root(tmp_path, rows))


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd"])
def test_metadata_csv_path_leaving_the_folder_is_refused(tmp_path, path):
    root = csv_root(tmp_path)
    meta = pd.read_csv(root / "metadata.csv", dtype=str)
    meta.loc[0, "path"] = path
    meta.to_csv(root / "metadata.csv", index=False)
    with pytest.raises(DataLayoutError, match="would leave the source folder"):
        MetadataCsv().load_root(root)


def test_metadata_csv_absent_image_raises_or_is_skipped_and_counted(tmp_path):
    root = csv_root(tmp_path)
    gone = root / "img" / "07.png"
    gone.unlink()
    with pytest.raises(DataLayoutError, match=r"metadata_csv: 1 image\(s\) listed in .*metadata.csv are missing") as err:
        MetadataCsv().load_root(root)
    assert str(gone) in str(err.value)
    results = MetadataCsv().load_root(root, skip_missing=True)
    assert results["site_b"].missing == [str(gone)] and results["site_b"].n_dropped == 1
    assert len(results["site_b"].records) == 5 and len(results["site_a"].records) == 6


def test_metadata_csv_unreadable_image_raises_or_is_skipped_and_counted(tmp_path):
    root = csv_root(tmp_path)
    broken = root / "img" / "01.png"
    broken.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataLayoutError, match="unreadable") as err:
        MetadataCsv().load_root(root)
    assert str(broken) in str(err.value)
    results = MetadataCsv().load_root(root, skip_missing=True)
    assert results["site_a"].missing == [str(broken)] and len(results["site_a"].records) == 5


# --- DOMAIN/CLASS folders ----------------------------------------------------------------------------

def test_domain_folders_round_trip_ignores_clutter(tmp_path):
    results = DomainFolders().load_root(folders_root(tmp_path))
    assert list(results) == ["art_painting", "photo", "sketch"]
    for res in results.values():
        assert Counter(res.records["label"]) == Counter(dog=4, giraffe=4, house=4) and res.n_dropped == 0
    photo = results["photo"].records
    assert photo["group"].iloc[0] == "photo/dog/pic_000.jpg" and photo["image_id"].iloc[0] == "pic_000"


def test_domain_folders_errors_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError, match=f"domain_folders: {tmp_path / 'empty'} holds no domain folders"):
        DomainFolders().load_root(tmp_path / "empty")
    root = folders_root(tmp_path)
    (root / "cartoon").mkdir()
    with pytest.raises(DataLayoutError, match=f"domain folder {root / 'cartoon'} holds no class folders"):
        DomainFolders().load_root(root)
    (root / "cartoon" / "dog").mkdir()
    (root / "cartoon" / "dog" / "notes.txt").write_text("x")
    (root / "all").mkdir()
    with pytest.raises(DataLayoutError, match="domain name 'all' is reserved"):
        DomainFolders().load_root(root)


def test_domain_folders_unreadable_image_raises_or_is_skipped_and_counted(tmp_path):
    root = folders_root(tmp_path)
    broken = root / "sketch" / "house" / "pic_002.jpg"
    broken.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataLayoutError, match=r"domain_folders: 1 image\(s\) .* unreadable") as err:
        DomainFolders().load_root(root)
    assert str(broken.resolve()) in str(err.value)
    results = DomainFolders().load_root(root, skip_missing=True)
    assert results["sketch"].missing == [str(broken.resolve())]
    assert Counter(results["sketch"].records["label"]) == Counter(dog=4, giraffe=4, house=3)


# --- through the catalog, the splits and the engine --------------------------------------------------

def test_native_layout_on_a_generic_root_says_which_set_reads_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds a metadata.csv: to read it, pass --set data.layout=metadata_csv"):
        load_catalog(DataConfig(root=str(csv_root(tmp_path)), cache_dir=str(tmp_path / "c")))
    with pytest.raises(FileNotFoundError, match="looks like DOMAIN/CLASS/<image> folders: .*data.layout=domain_folders"):
        load_catalog(DataConfig(root=str(folders_root(tmp_path)), cache_dir=str(tmp_path / "c")))
    with pytest.raises(ValueError, match="data.layout=domain_folders reads a data root"):
        load_catalog(DataConfig(layout="domain_folders", cache_dir=str(tmp_path / "c")))


def test_catalog_of_a_generic_root_takes_its_sorted_labels_as_the_space(tmp_path):
    root = csv_root(tmp_path)
    catalog = load_catalog(DataConfig(root=str(root), layout="metadata_csv", cache_dir=str(tmp_path / "c")))
    assert catalog.classes == ("benign", "malignant", "uncertain") and catalog.domains == ["site_a", "site_b"]
    table = summary_table(catalog)
    assert table.loc["site_a", ["benign", "malignant", "uncertain", "total"]].tolist() == [3, 2, 1, 6]
    assert catalog.describe() == f"{root.resolve()} (metadata_csv: 2 domains; 3 classes (labels))"


def test_a_named_label_space_drops_and_counts_other_labels(tmp_path, monkeypatch):
    monkeypatch.setitem(LABEL_SPACES._items, "binary", LabelSpace("binary", ("benign", "malignant")))
    catalog = load_catalog(DataConfig(root=str(csv_root(tmp_path)), layout="metadata_csv", label_space="binary",
                                      cache_dir=str(tmp_path / "c")))
    assert catalog.classes == ("benign", "malignant")
    assert catalog.counts().loc["site_b"].to_dict() == {"benign": 3, "malignant": 1}
    assert "site_b: dropped 2 outside the 2 classes (uncertain 2)" in dropped_report(catalog)


def test_domainbed_pool_without_primary_holds_out_a_domain(tmp_path):
    cfg = DataConfig(root=str(folders_root(tmp_path)), layout="domain_folders", cache_dir=str(tmp_path / "c"),
                     primary="none", holdout=("sketch",))
    data = prepare_data(cfg)
    assert data.classes == ("dog", "giraffe", "house") and data.primary is None
    assert data.train_domains == ["art_painting", "photo"]
    pool = data.manifest.iloc[data.pool]
    # every training image of every other domain (2 per class of 4, as 50/20/30 deals 4 single-image groups)
    assert set(pool["split"]) == {"train"} and Counter(pool["domain"]) == Counter(art_painting=6, photo=6)
    assert sorted(set(data.labels.tolist())) == [0, 1, 2]
    with pytest.raises(ValueError, match="data.primary=HAM is not a domain of this data"):
        prepare_data(DataConfig(root=cfg.root, layout="domain_folders", cache_dir=cfg.cache_dir))
    with pytest.raises(ValueError, match="data.holdout names cartoon"):
        prepare_data(DataConfig(root=cfg.root, layout="domain_folders", cache_dir=cfg.cache_dir, primary="none",
                                holdout=("cartoon",)))


def test_a_domain_folders_root_trains_through_the_engine(tmp_path):
    cfg = resolve_config("A", "smoke", 0, [f"data.root={folders_root(tmp_path)}", "data.layout=domain_folders",
                                           "data.primary=photo", f"data.cache_dir={tmp_path / 'c'}", "data.workers=0",
                                           "threads=1", f"out={tmp_path / 'runs'}", "optim.epochs=1"])
    result = run_train(cfg)
    final = [r for r in read_results(result.run_dir) if r["stage"] == "final"]
    assert {(r["split"], r["domain"]) for r in final} == {(s, d) for s in ("val", "test")
                                                          for d in ("art_painting", "photo", "sketch")}
    assert {"recall_dog", "recall_giraffe", "recall_house"} <= set(final[0])
    assert final[0]["mel_auc"] is None  # no melanoma class: the melanoma metrics are undefined
    assert result.summary["train_domains"] == ["photo"]  # nsec = 0: the primary domain alone
    import yaml
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["classes"] == ["dog", "giraffe", "house"]


@pytest.fixture(scope="module")
def pacs_root(tmp_path_factory) -> Path:
    return folders_root(tmp_path_factory.mktemp("domainbed"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ALGORITHMS.names())
def test_every_algorithm_trains_on_a_domainbed_layout_folder(name, pacs_root, tmp_path):
    """DomainBed's protocol on PACS in miniature (DOMAIN/CLASS/*.jpg, every non-held-out domain's training
    split, sketch held out) with each registered algorithm, through the generic source and the one engine."""
    cfg = resolve_config("E", "smoke", 0, [f"data.root={pacs_root}", "data.layout=domain_folders", "data.primary=none",
                                           "data.holdout=sketch", f"data.cache_dir={pacs_root.parent / 'c'}",
                                           "data.workers=0", "threads=1", f"out={tmp_path / 'runs'}", "optim.epochs=1",
                                           f"algorithm.name={name}"])
    result = run_train(cfg)
    rows = read_results(result.run_dir)
    assert result.summary["algorithm"] == name and result.summary["train_domains"] == ["art_painting", "photo"]
    final = {(r["split"], r["domain"]) for r in rows if r["stage"] == "final"}
    epoch = {(r["split"], r["domain"]) for r in rows if r["stage"] == "val"}
    every = {(s, d) for s in ("val", "test") for d in ("art_painting", "photo", "sketch")}
    assert final == every and epoch == every  # sketch's curves are recorded for oracle selection
    train = next(r for r in rows if r["stage"] == "train")
    assert np.isfinite(train["train_loss"])


@pytest.mark.slow
def test_sweep_rows_once_per_held_out_domain_of_a_domainbed_folder(pacs_root, tmp_path, capsys):
    """`sweep --exps E --holdout all` on a folder the study has no leave-one-out rows for: E once per domain
    held out (the primary is none, so every domain), per algorithm; the table by algorithm then reads the
    folder's own domains, each cell the run holding that domain out."""
    from domgen import run

    out = tmp_path / "runs"
    common = ["--preset", "smoke", "--runs", str(out)]
    assert run.main(["sweep", "--exps", "E", "--holdout", "all", "--algorithms", "erm,coral", "--seeds", "1",
                     "--preset", "smoke", "--data-root", str(pacs_root), "--cache-dir", str(pacs_root.parent / "c"),
                     "--set", "data.layout=domain_folders", "--set", "data.primary=none", "--set", "optim.epochs=1",
                     "--set", "threads=1", "--out", str(out), "--max-parallel", "2"]) == 0
    assert "6/6 runs done" in capsys.readouterr().out
    final = {}
    for results in out.glob("E-s0-*/results.jsonl"):
        rows = [r for r in read_results(results.parent) if r["stage"] == "final" and r["split"] == "test"]
        (held,) = rows[0]["holdout"]
        final[(rows[0]["algorithm"], held)] = next(r["macro_recall"] for r in rows if r["domain"] == held)
    assert sorted(final) == [(a, d) for a in ("coral", "erm") for d in ("art_painting", "photo", "sketch")]
    assert run.main(["table", "--by", "algorithm", *common]) == 0
    md = capsys.readouterr().out
    assert "| Algorithm | art_painting | photo | sketch | avg | seeds |" in md
    erm = next(line for line in md.splitlines() if line.startswith("| erm |"))
    assert erm.split(" | ")[1:4] == [f"{final[('erm', d)]:.1f}*" for d in ("art_painting", "photo", "sketch")]
    assert run.main(["table", *common]) == 2  # by experiment: six runs of E per seed, and the error says where to look
    assert "`table --by algorithm`" in capsys.readouterr().err
