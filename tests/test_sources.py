"""Source adapters read each native layout exactly: fixtures are written with ``write_source`` (plus
hand-made quirks of the real releases), and every test checks the records, labels, groups and counts
read back, including Table 1 of Yoon et al., MICCAI 2019 from the release counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from domgen.data import labels
from domgen.data.sources import RECORD_COLUMNS, SOURCES, DataLayoutError
from domgen.data.sources.dermofit import RELEASE_COUNTS
from domgen.data.sources.ham10000 import label_metadata
from domgen.data.sources.isic import diagnosis_term
from domgen.data.writers import Item, write_source

# An 8x8 gradient: real pixels, tiny files; fixtures with a thousand images still write in a second.
TINY = (np.arange(8, dtype=np.uint8)[:, None, None] * 30 + np.zeros((8, 8, 3), np.uint8)).astype(np.uint8)


def item(diagnosis: str, image_id: str, group: str | None = None, **meta) -> Item:
    return Item(TINY, diagnosis, group or image_id, image_id, meta)


def case(num: int | str, diagnosis: str, **meta) -> list[Item]:
    """A Derm7pt case: a clinical and a dermoscopic image in one group."""
    return [item(diagnosis, f"c{num}_{m}", str(num), modality=m, **meta) for m in ("clinic", "derm")]


def triples(result) -> list[tuple[str, str, str]]:
    return sorted(zip(result.records["image_id"], result.records["label"], result.records["group"]))


def load(source: str, folder: Path, **kw):
    return SOURCES.get(source).load(folder, **kw)


# One small fixture per source and the (image_id, label, group) it must read back as.
SAMPLES: dict[str, tuple[list[Item], list[tuple[str, str, str]]]] = {
    "HAM10000": ([item("nv", "ISIC_1", "HAM_1"), item("mel", "ISIC_2", "HAM_1"), item("df", "ISIC_3", "HAM_2")],
                 [("ISIC_1", "nv", "HAM_1"), ("ISIC_2", "mel", "HAM_1"), ("ISIC_3", "df", "HAM_2")]),
    "Dermofit": ([item("ML", "B1"), item("IEC", "A7"), item("PYO", "P3")],
                 [("A7", "akiec", "A7"), ("B1", "nv", "B1"), ("P3", "vasc", "P3")]),
    "Derm7pt": (case(1, "clark nevus") + case(2, "basal cell carcinoma"),
                [("c1_clinic", "nv", "1"), ("c1_derm", "nv", "1"), ("c2_clinic", "bcc", "2"), ("c2_derm", "bcc", "2")]),
    "PH2": ([item("Common Nevus", "IMD001"), item("Atypical Nevus", "IMD002"), item("Melanoma", "IMD003")],
            [("IMD001", "nv", "IMD001"), ("IMD002", "nv", "IMD002"), ("IMD003", "mel", "IMD003")]),
}
for _isic in ("MSK", "UDA", "SONIC"):
    SAMPLES[_isic] = ([item("nevus", "ISIC_01", lesion_id="IL_1"), item("melanoma", "ISIC_02", lesion_id="IL_1"),
                       item("dermatofibroma", "ISIC_03", lesion_id="IL_3")],
                      [("ISIC_01", "nv", "IL_1"), ("ISIC_02", "mel", "IL_1"), ("ISIC_03", "df", "IL_3")])


def test_every_registered_source_has_a_sample_and_its_domain_code():
    assert sorted(SOURCES.names()) == sorted(SAMPLES)
    assert {SOURCES.get(n).domain for n in SOURCES} == set(labels.DOMAINS)


@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_round_trip_records(tmp_path, source):
    items, expected = SAMPLES[source]
    result = load(source, write_source(source, tmp_path / source, items))
    assert triples(result) == expected
    assert list(result.records.columns[:5]) == RECORD_COLUMNS
    assert set(result.records["domain"]) == {labels.DOMAIN_CODES[source]}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in result.records["path"])
    assert result.n_dropped == 0 and result.root == tmp_path / source


@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_missing_metadata_names_source_file_and_layout(tmp_path, source):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError) as err:
        load(source, tmp_path / "empty")
    marker = {"HAM10000": "HAM10000_metadata.csv", "Dermofit": "AK/", "Derm7pt": "meta/meta.csv",
              "PH2": "PH2_dataset.xlsx"}.get(source, "metadata.csv")
    message = str(err.value)
    assert message.startswith(f"{source}:") and marker in message and SOURCES.get(source).layout in message


@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_absent_image_raises_or_is_skipped_and_counted(tmp_path, source):
    items, expected = SAMPLES[source]
    folder = write_source(source, tmp_path / source, items)
    gone = Path(load(source, folder).records["path"][0])
    gone.unlink()
    with pytest.raises(DataLayoutError, match="1 image\\(s\\) listed") as err:
        load(source, folder)
    assert str(gone) in str(err.value)
    result = load(source, folder, skip_missing=True)
    assert result.missing == [str(gone)] and result.n_dropped == 1
    assert len(result.records) == len(expected) - 1 and str(gone) not in set(result.records["path"])


@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_unreadable_image_raises_or_is_skipped_and_counted(tmp_path, source):
    items, expected = SAMPLES[source]
    folder = write_source(source, tmp_path / source, items)
    broken = Path(load(source, folder).records["path"][1])
    broken.write_bytes(b"<html>404 not found</html>")  # exists, but no image header
    with pytest.raises(DataLayoutError, match="unreadable") as err:
        load(source, folder)
    assert str(broken) in str(err.value)
    result = load(source, folder, skip_missing=True)
    assert result.missing == [str(broken)] and len(result.records) == len(expected) - 1


# --- HAM10000 ----------------------------------------------------------------------------------------

def test_ham_eight_and_seven_columns(tmp_path):
    items = [item("nv", "ISIC_1", "HAM_1", age=45.0, sex="male", dataset="rosendahl"), item("nv", "ISIC_2", "HAM_1"),
             item("mel", "ISIC_3", "HAM_2"), item("bkl", "ISIC_4", "HAM_3")]
    eight = load("HAM10000", write_source("HAM10000", tmp_path / "h8", items)).records
    seven = load("HAM10000", write_source("HAM10000", tmp_path / "h7", items, style="7col")).records
    meta = ["lesion_id", "dx", "dx_type", "age", "sex", "localization"]
    assert list(eight.columns) == RECORD_COLUMNS + meta + ["dataset"]
    assert list(seven.columns) == RECORD_COLUMNS + meta
    for records in (eight, seven):
        assert records["label"].tolist() == ["nv", "nv", "mel", "bkl"]
        assert records["group"].tolist() == ["HAM_1", "HAM_1", "HAM_2", "HAM_3"]
        # The writer splits the images over both release folders; the reader searches both.
        assert [Path(p).parent.name[-6:] for p in records["path"]] == ["part_1", "part_1", "part_2", "part_2"]
    assert (eight.loc[0, "age"], eight.loc[0, "sex"], eight.loc[0, "dataset"]) == ("45.0", "male", "rosendahl")


def test_ham_nested_release_and_images_folder_and_unmapped_dx(tmp_path):
    items = [item("nv", "ISIC_1", "HAM_1"), item("scc", "ISIC_2", "HAM_2"), item("vasc", "ISIC_3", "HAM_3")]
    release = write_source("HAM10000", tmp_path / "HAM10000" / "HAM10000_release", items, style="7col")
    (release / "images").mkdir()
    for part in ("HAM10000_images_part_1", "HAM10000_images_part_2"):
        for f in (release / part).iterdir():
            f.rename(release / "images" / f.name)
        (release / part).rmdir()
    result = load("HAM10000", tmp_path / "HAM10000")
    assert result.root == release
    assert triples(result) == [("ISIC_1", "nv", "HAM_1"), ("ISIC_3", "vasc", "HAM_3")]
    assert {Path(p).parent.name for p in result.records["path"]} == {"images"}
    assert result.dropped_labels == Counter({"scc": 1})



def test_ham_metadata_without_dx_column_names_the_column(tmp_path):
    folder = write_source("HAM10000", tmp_path / "h", SAMPLES["HAM10000"][0], style="7col")
    csv = folder / "HAM10000_metadata.csv"
    pd.read_csv(csv).rename(columns={"dx": "diagnosis"}).to_csv(csv, index=False)
    with pytest.raises(DataLayoutError, match="HAM10000: .*HAM10000_metadata.csv lacks column\\(s\\) dx "):
        load("HAM10000", folder)

@pytest.mark.parametrize("source,column", [("HAM10000", "image_id"), ("MSK", "isic_id")])
def test_path_leaving_the_source_folder_is_refused(tmp_path, source, column):
    folder = write_source(source, tmp_path / "src", SAMPLES[source][0])
    csv = folder / ("HAM10000_metadata.csv" if source == "HAM10000" else "metadata.csv")
    meta = pd.read_csv(csv, dtype=str)
    meta.loc[0, column] = "../../outside"
    meta.to_csv(csv, index=False)
    with pytest.raises(DataLayoutError, match="would leave the source folder"):
        load(source, folder)


def test_ham_sample_real_data(shared_data):
    result = load("HAM10000", shared_data / "ham10000_sample")
    assert len(result.records) == 70 and result.n_dropped == 0
    assert Counter(result.records["label"]) == Counter({c: 10 for c in labels.CLASSES})
    assert result.records["image_id"].is_unique and set(result.records["domain"]) == {"HAM"}


def test_ham_table1_row_from_full_metadata(shared_data):
    meta = pd.read_csv(shared_data / "HAM10000_metadata_full.csv", dtype=str, keep_default_na=False)
    rows, dropped = label_metadata(meta)
    assert Counter(rows["label"]) == Counter(nv=6705, mel=1113, bcc=514, df=115, bkl=1099, vasc=142, akiec=327)
    assert len(rows) == 10015 and not dropped
    assert rows["group"].nunique() == meta["lesion_id"].nunique() == 7470  # lesions, the split unit


# --- Dermofit ----------------------------------------------------------------------------------------

def test_dermofit_release_counts_give_table1(tmp_path):
    items = [item(cls, f"{cls}{i:03d}") for cls, n in RELEASE_COUNTS.items() for i in range(n)]
    release = write_source("Dermofit", tmp_path / "Dermofit" / "dermofit_release", items)
    (release / "lesionlist.txt").write_text("not a class folder\n")
    (release / "SK" / "README.txt").write_text("not a case folder\n")
    result = load("Dermofit", tmp_path / "Dermofit")
    assert result.root == release and len(result.records) == 1212
    assert Counter(result.records["label"]) == Counter(nv=331, mel=76, bcc=239, df=65, bkl=257, vasc=121, akiec=123)
    assert result.dropped_labels == Counter({"SCC": 88})
    # Each <ID>/ also holds <ID>mask.png: it is never a record.
    assert not any(p.endswith("mask.png") for p in result.records["path"])
    assert (result.records["group"] == result.records["image_id"]).all()


# --- Derm7pt -----------------------------------------------------------------------------------------

# Release cases per diagnosis (meta/meta.csv of release_v0).
DERM7PT_CASES = {
    "clark nevus": 399, "melanoma (less than 0.76 mm)": 102, "reed or spitz nevus": 79, "melanoma (in situ)": 64,
    "melanoma (0.76 to 1.5 mm)": 53, "seborrheic keratosis": 45, "basal cell carcinoma": 42, "dermal nevus": 33,
    "vascular lesion": 29, "blue nevus": 28, "melanoma (more than 1.5 mm)": 28, "lentigo": 24,
    "dermatofibroma": 20, "congenital nevus": 17, "melanosis": 16, "combined nevus": 13, "miscellaneous": 8,
    "recurrent nevus": 6, "melanoma metastasis": 4, "melanoma": 1,
}
DERM7PT_TABLE1 = Counter(nv=1150, mel=504, bcc=84, df=40, bkl=90, vasc=58)  # akiec 0; total 1926


def test_derm7pt_map_on_release_case_counts():
    images = Counter()
    for diagnosis, n in DERM7PT_CASES.items():
        label = labels.map_label("Derm7pt", diagnosis)
        if label:
            images[label] += 2 * n  # two images per case
    assert images == DERM7PT_TABLE1 and sum(images.values()) == 1926


def test_derm7pt_release_gives_table1_with_case_quirks(tmp_path):
    diagnoses = [d for d, n in DERM7PT_CASES.items() for _ in range(n)]  # 1011 cases
    items = [it for i, d in enumerate(diagnoses, 1) for it in case(i, d)]
    release = write_source("Derm7pt", tmp_path / "Derm7pt" / "release_v0", items)
    # The release's folder and file names differ in case from the paths in meta.csv.
    (release / "images" / "clark_nevus").rename(release / "images" / "Clark_NEVUS")
    first_blue = next(p for p in sorted((release / "images" / "blue_nevus").iterdir()))
    first_blue.rename(first_blue.with_name(first_blue.name.upper()))
    result = load("Derm7pt", tmp_path / "Derm7pt")
    assert result.root == release and not result.missing
    assert Counter(result.records["label"]) == DERM7PT_TABLE1 and len(result.records) == 1926
    assert result.dropped_labels == Counter(lentigo=48, melanosis=32, miscellaneous=16)
    assert Counter(Path(p).parent.name for p in result.records["path"])["Clark_NEVUS"] == 798
    assert first_blue.with_name(first_blue.name.upper()).resolve() in {Path(p) for p in result.records["path"]}
    pairs = result.records.groupby("group")["modality"].apply(sorted)
    assert len(pairs) == 963 and all(p == ["clinic", "derm"] for p in pairs)


def test_derm7pt_path_with_dotdot_is_refused(tmp_path):
    folder = write_source("Derm7pt", tmp_path / "d7", case(1, "clark nevus"))
    meta = pd.read_csv(folder / "meta" / "meta.csv", dtype=str)
    meta.loc[0, "derm"] = "../../../etc/passwd"
    meta.to_csv(folder / "meta" / "meta.csv", index=False)
    with pytest.raises(DataLayoutError, match="would leave"):
        load("Derm7pt", folder)


# --- PH2 ---------------------------------------------------------------------------------------------

def ph2_items() -> list[Item]:
    names = ["Common Nevus"] * 80 + ["Atypical Nevus"] * 80 + ["Melanoma"] * 40
    items = [item(d, f"IMD{i + 1:03d}") for i, d in enumerate(names)]
    items[-1].meta = {"histological_diagnosis": "Melanoma", "asymmetry": 2, "pigment_network": "AT",
                      "streaks": "P", "colors": "3 4 6"}
    return items


def test_ph2_xlsx_and_txt_read_alike_and_give_table1(tmp_path):
    xlsx = write_source("PH2", tmp_path / "a" / "PH2Dataset", ph2_items())
    txt = write_source("PH2", tmp_path / "b", ph2_items(), style="txt")
    assert pd.read_excel(xlsx / "PH2_dataset.xlsx", header=None).iloc[0, 0] == "Legends:"
    from_xlsx, from_txt = load("PH2", tmp_path / "a"), load("PH2", txt)
    assert from_xlsx.root == xlsx
    for result in (from_xlsx, from_txt):
        assert Counter(result.records["label"]) == Counter(nv=160, mel=40) and result.n_dropped == 0
        last = result.records.iloc[-1]
        assert (last["image_id"], last["clinical_diagnosis"], last["colors"]) == ("IMD200", "Melanoma", "3 4 6")
        assert (last["asymmetry"], last["pigment_network"], last["histological_diagnosis"]) == ("2", "AT", "Melanoma")
    pd.testing.assert_frame_equal(from_xlsx.records.drop(columns="path"), from_txt.records.drop(columns="path"))


def test_ph2_official_two_row_header_and_trailing_legends(tmp_path):
    """The official sheet: legends, a header row whose 'Clinical Diagnosis' and 'Colors' span the class
    and colour columns named on the row below, then a blank row and more legend text after the table."""
    folder = write_source("PH2", tmp_path / "PH2", [item("Atypical Nevus", "IMD002"), item("Melanoma", "IMD058")],
                          style="txt")
    (folder / "PH2_dataset.txt").unlink()
    top = ["Image Name", "Histological Diagnosis", "Clinical Diagnosis", None, None, "Asymmetry\n(0/1/2)",
           "Pigment Network\n(AT/T)", "Dots/Globules\n(A/AT/T)", "Streaks\n(A/P)", "Regression Areas\n(A/P)",
           "Blue-Whitish Veil\n(A/P)", "Colors", None, None, None, None, None]
    low = [None, None, "Common Nevus", "Atypical Nevus", "Melanoma", *[None] * 6,
           "White", "Red", "Light-Brown", "Dark-Brown", "Blue-Gray", "Black"]
    rows = [["Legends:"], ["Asymmetry: 0 - Fully Symmetric"], [], top, low,
            ["IMD002", None, None, "X", None, 0, "T", "A", "A", "A", "A", None, None, "X", "X", None, None],
            ["IMD058", "Melanoma", None, None, "X", 2, "AT", "AT", "P", "P", "P", None, None, None, "X", "X", "X"],
            [], ["Note: the colour columns list every colour present"]]
    pd.DataFrame([r + [None] * (17 - len(r)) for r in rows]).to_excel(folder / "PH2_dataset.xlsx", header=False,
                                                                      index=False)
    records = load("PH2", folder).records
    assert records[["image_id", "label", "clinical_diagnosis", "colors"]].values.tolist() == [
        ["IMD002", "nv", "Atypical Nevus", "3 4"], ["IMD058", "mel", "Melanoma", "4 5 6"]]
    assert records["dots_globules"].tolist() == ["A", "AT"]


def test_ph2_txt_unknown_code_is_dropped_and_legend_lines_skipped(tmp_path):
    folder = write_source("PH2", tmp_path / "PH2", [item("Common Nevus", "IMD001"), item("Melanoma", "IMD002")],
                          style="txt")
    txt = folder / "PH2_dataset.txt"
    text = txt.read_text().replace("||                  2 ||", "||                  7 ||")
    txt.write_text(text + "\nLegends:\nClinical Diagnosis: 0 - Common Nevus; 1 - Atypical Nevus; 2 - Melanoma\n")
    result = load("PH2", folder)
    assert triples(result) == [("IMD001", "nv", "IMD001")]
    assert result.dropped_labels == Counter({"code 7": 1})


def test_ph2_txt_row_with_wrong_field_count_is_an_error(tmp_path):
    folder = write_source("PH2", tmp_path / "PH2", [item("Common Nevus", "IMD001")], style="txt")
    txt = folder / "PH2_dataset.txt"
    txt.write_text(txt.read_text() + "|| IMD002 ||  || 1 || 0 | T ||  4 ||\n")
    with pytest.raises(DataLayoutError, match="1 row\\(s\\) .* do not have the header's 10 fields"):
        load("PH2", folder)


# --- ISIC Archive (MSK, UDA, SONIC) ------------------------------------------------------------------

ISIC_ITEMS = [
    item("nevus", "ISIC_01", lesion_id="IL_1", patient_id="IP_1"),
    item("nevus", "ISIC_02", lesion_id="IL_1", patient_id="IP_1"),
    item("melanoma", "ISIC_03", lesion_id="", patient_id="IP_2"),
    item("solar lentigo", "ISIC_04", lesion_id="", patient_id=""),  # neither: its own group
    item("actinic keratosis", "ISIC_05", lesion_id="IL_5", patient_id="IP_2"),  # patient beats lesion (#13)
    item("squamous cell carcinoma", "ISIC_06", lesion_id="IL_6"),
]


@pytest.mark.parametrize("source,style,dropped", [
    ("MSK", "legacy", "squamous cell carcinoma"),
    ("SONIC", "hierarchical", "Squamous cell carcinoma, NOS"),
    ("UDA", "hierarchical", "Squamous cell carcinoma, NOS"),
])
def test_isic_styles_grouping_and_images_folder(tmp_path, source, style, dropped):
    folder = write_source(source, tmp_path / source, ISIC_ITEMS, style=style)
    (folder / "images").mkdir()
    (folder / "ISIC_03.jpg").rename(folder / "images" / "ISIC_03.jpg")  # downloads may use images/
    result = load(source, folder)
    assert triples(result) == [("ISIC_01", "nv", "IP_1"), ("ISIC_02", "nv", "IP_1"), ("ISIC_03", "mel", "IP_2"),
                               ("ISIC_04", "bkl", "ISIC_04"), ("ISIC_05", "akiec", "IP_2")]
    assert result.regrouped == 3  # ISIC_01, 02, 05: grouped by lesion before issue #13
    assert result.dropped_labels == Counter({dropped: 1})
    assert set(result.records["domain"]) == {labels.DOMAIN_CODES[source]}
    assert ("diagnosis" in result.records) == (style == "legacy")


def test_isic_hierarchical_term_is_deepest_mapped_level():
    row = pd.Series({"diagnosis_1": "Benign", "diagnosis_2": "Benign melanocytic proliferations",
                     "diagnosis_3": "Nevus", "diagnosis_4": "Nevus, Spitz", "diagnosis_5": ""})
    levels = [f"diagnosis_{i}" for i in range(1, 6)]
    assert diagnosis_term(row, levels) == "Nevus"
    assert diagnosis_term(row.replace("Nevus", ""), levels) == "Benign melanocytic proliferations"
    assert diagnosis_term(pd.Series({c: "" for c in levels}), levels) == ""


def test_write_source_rejects_unknown_source_and_style(tmp_path):
    with pytest.raises(ValueError, match="unknown style 'csv'"):
        write_source("PH2", tmp_path, [], style="csv")
    with pytest.raises(KeyError, match="no writer"):
        write_source("ISIC2019", tmp_path, [])

