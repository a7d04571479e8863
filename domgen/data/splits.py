"""Partitions of the record table: lesion-grouped stratified splits, their manifest, the ``nsec`` pools.

Yoon, Hamarneh & Garbi (MICCAI 2019), Sec. 3: every domain is split into training, validation and test
partitions; a model is trained on all of HAM10000's training partition plus ``nsec`` training images
per class from each other domain (nsec = 0..5, or "a" for all of them) and tested on each domain's
test partition. Here each domain is split 50/20/30 by images, stratified by class and grouped so that
no group (patient where the source gives patient ids, else lesion or case, else the image; each source's
card in datasets/ says which) appears in two partitions; the split is a pure function of the records and
a seed, persisted once as a CSV manifest named by the hash of both.

Split variance (issue #13): ``folds = K`` replaces the 50/20/30 split by a stratified group K-fold of each
domain (scikit-learn's ``StratifiedGroupKFold``): fold ``fold`` is the test partition and validation is
carved, grouped and stratified, from the other K - 1 folds in the paper's 20 : 50 ratio. Every group is
test in exactly one fold. ``folds = 0`` (the default) is the paper's split, with the manifests it always had.
"""

from __future__ import annotations

import hashlib
import numbers
from pathlib import Path
from typing import Iterable

import warnings

import numpy as np
import pandas as pd

from domgen.atomic import atomic_path
from domgen.data.labels import CLASS_INDEX, CLASSES, DOMAINS, PRIMARY_DOMAIN
from domgen.seeds import derive_seed

SPLITS: tuple[str, ...] = ("train", "val", "test")  # order of ``fractions``
# Order in which partitions win ties and are filled for classes with fewer than three groups:
# one group -> train, two -> train + test (a test estimate before a validation one), three -> all.
PRIORITY: tuple[str, ...] = ("train", "test", "val")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.5, 0.2, 0.3)
MANIFEST_VERSION = 1  # bump when the split algorithm or the manifest format changes
KEY_COLUMNS = ["path", "label", "domain", "group"]
MANIFEST_COLUMNS = ["path", "domain", "label", "group", "split", "image_id"]
NSEC_MAX = 5
# Within a fold, train : val of the paper's split (0.5 : 0.2), carved from the K - 1 training folds.
FOLD_FRACTIONS: tuple[float, float, float] = (5 / 7, 2 / 7, 0.0)
OFFICIAL = "official_split"  # a record column naming the release's own partition (train/val/test), kept as given


# The manifest's seeds (domgen.seeds, "|"-joined, all 64 bits): changing them would re-split every dataset.
_SPLIT_SEED = {"sep": "|", "bits": 64}


def _check_fractions(fractions: Iterable[float]) -> np.ndarray:
    fr = np.asarray(tuple(fractions), dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0) or fr[0] <= 0:
        raise ValueError(
            f"fractions must be three non-negative numbers (train > 0, val, test) summing to 1; got {tuple(fr)}"
        )
    return fr


def _check_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} lacks column(s) {missing}; it has {list(frame.columns)}")


def _group_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (domain, group): its image count and its stratification label.

    A group whose images disagree (rare, e.g. a re-diagnosed lesion) takes its most frequent label;
    ties go to the label earlier in CLASSES, so the choice never depends on row order.
    """
    counts = records.groupby(["domain", "group", "label"], sort=False).size().rename("n").reset_index()
    counts["rank"] = counts["label"].map(CLASS_INDEX).fillna(len(CLASSES))
    counts = counts.sort_values(["n", "rank", "label"], ascending=[False, True, True], kind="mergesort")
    majority = counts.drop_duplicates(["domain", "group"])[["domain", "group", "label"]]
    sizes = records.groupby(["domain", "group"], sort=False).size().rename("size").reset_index()
    return sizes.merge(majority, on=["domain", "group"], validate="one_to_one")


def _assign_class(sizes: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Partition (index into PRIORITY) of each group of one (domain, class), in the given order.

    Greedy: each group goes to the partition with the largest remaining deficit (target images minus
    images assigned), ties to the earlier partition in PRIORITY. Before that, when the groups left are
    no more than the partitions still empty, the next group fills the first empty one, so that a class
    with 1, 2 or 3 groups lands in train; train + test; train + test + val whatever its group sizes.
    """
    frac = np.array([fractions[SPLITS.index(p)] for p in PRIORITY])  # (3,) in PRIORITY order
    target = frac * sizes.sum()
    assigned = np.zeros(3)
    filled = np.zeros(3, dtype=bool)
    required = [p for p in range(3) if frac[p] > 0][: len(sizes)]
    out = np.empty(len(sizes), dtype=np.int64)
    for i, size in enumerate(sizes):
        empty = [p for p in required if not filled[p]]
        if empty and len(sizes) - i <= len(empty):
            p = empty[0]
        else:
            # Rounded so that float noise never breaks a tie that is exact in images.
            deficit = np.where(frac > 0, np.round(target - assigned, 9), -np.inf)
            p = int(np.argmax(deficit))
        out[i] = p
        assigned[p] += size
        filled[p] = True
    return out


def assign_splits(records: pd.DataFrame, seed: int, fractions=DEFAULT_FRACTIONS) -> pd.Series:
    """"train"/"val"/"test" for each record, aligned with ``records.index``.

    Per domain and per class (a group's majority label), independently: the groups, in a permutation
    drawn from a generator seeded by (seed, domain, class), are stably ordered by size descending and
    dealt out by ``_assign_class``. The result depends on the records' content, never their order.
    """
    fr = _check_fractions(fractions)
    _check_columns(records, ["label", "domain", "group"], "records")
    if records.empty:
        return pd.Series([], index=records.index, dtype=str, name="split")
    rec = records[["domain", "group", "label"]].astype(str)
    groups = _group_table(rec).sort_values(["domain", "label", "group"], kind="mergesort")
    split_of_group: dict[tuple[str, str], str] = {}
    for (domain, label), cls in groups.groupby(["domain", "label"], sort=True):
        rng = np.random.default_rng(derive_seed(seed, domain, label, **_SPLIT_SEED))
        order = rng.permutation(len(cls))
        # Stable sort after the shuffle: big groups first, equal sizes in the seeded random order.
        cls = cls.iloc[order].sort_values("size", ascending=False, kind="mergesort")
        parts = _assign_class(cls["size"].to_numpy(), fr)
        split_of_group.update(zip(zip(cls["domain"], cls["group"]), (PRIORITY[p] for p in parts)))
    keys = pd.MultiIndex.from_frame(rec[["domain", "group"]])
    lookup = pd.Series(split_of_group)
    return pd.Series(lookup.reindex(keys).to_numpy(), index=records.index, dtype=str, name="split")


def check_folds(folds: int, fold: int) -> None:
    """``folds`` 0 (the paper's split; ``fold`` must be 0) or K >= 2 with ``fold`` in 0..K-1."""
    if folds == 0 and fold == 0:
        return
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"data.folds={folds}, data.fold={fold}: folds is 0 (the 50/20/30 split) or K >= 2 "
                         "with fold in 0..K-1")


def fold_of_records(records: pd.DataFrame, seed: int, folds: int) -> pd.Series:
    """Test fold (0..folds-1) of each record, aligned with ``records.index``: per domain, scikit-learn's
    ``StratifiedGroupKFold`` (shuffled, seeded by (seed, domain, folds)) on the image labels and groups.

    Rows are sorted by (group, path) first, so the folds depend on the records' content, never their order.
    A domain with fewer groups than folds cannot be split so (every fold needs a test group): an error."""
    from sklearn.model_selection import StratifiedGroupKFold  # scikit-learn only when folds are asked for

    _check_columns(records, ["path", "label", "domain", "group"], "records")
    rec = records[["path", "label", "domain", "group"]].astype(str).reset_index(drop=True)  # index = position
    out = np.full(len(rec), -1, dtype=np.int64)
    for domain, part in rec.groupby("domain", sort=True):
        part = part.sort_values(["group", "path"], kind="mergesort")
        n_groups = part["group"].nunique()
        if n_groups < folds:
            raise ValueError(f"domain {domain} has {n_groups} group(s), fewer than data.folds={folds}: use fewer folds "
                             "or hold the domain out of the data")
        state = derive_seed(seed, domain, "folds", folds, **_SPLIT_SEED) % 2**32  # RandomState takes 32 bits
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=state)
        with warnings.catch_warnings():  # "least populated class has only n members": expected for rare classes
            warnings.simplefilter("ignore", UserWarning)
            for k, (_, test) in enumerate(cv.split(part, part["label"], part["group"])):
                out[part.index[test]] = k
    return pd.Series(out, index=records.index, name="fold")


def assign_fold_splits(records: pd.DataFrame, seed: int, folds: int, fold: int) -> pd.Series:
    """"train"/"val"/"test" for each record under fold ``fold`` of ``fold_of_records``: that fold is test;
    the other folds are split into train and val by ``assign_splits`` (grouped, stratified by class) at
    FOLD_FRACTIONS, with a seed of its own per fold."""
    check_folds(folds, fold)
    if records.empty:
        return pd.Series([], index=records.index, dtype=str, name="split")
    test = fold_of_records(records, seed, folds).eq(fold).to_numpy()
    split = np.full(len(records), "test", dtype=object)
    rest = records.iloc[np.flatnonzero(~test)]
    split[~test] = assign_splits(rest, derive_seed(seed, "fold", folds, fold, **_SPLIT_SEED), FOLD_FRACTIONS).to_numpy()
    return pd.Series(split, index=records.index, dtype=str, name="split")


def split_records(records: pd.DataFrame, seed: int, fractions=DEFAULT_FRACTIONS, folds: int = 0, fold: int = 0) -> pd.Series:
    """The split of each record: the paper's ``assign_splits`` when ``folds`` is 0, else fold ``fold`` of K."""
    if folds == 0:
        check_folds(folds, fold)
        return assign_splits(records, seed, fractions)
    return assign_fold_splits(records, seed, folds, fold)


# --------------------------------------------------------------------------------------------- manifest


def manifest_key(records: pd.DataFrame, seed: int, fractions=DEFAULT_FRACTIONS, folds: int = 0, fold: int = 0) -> str:
    """Hex hash of everything a split depends on: the sorted (path, label, domain, group) rows, the
    seed, the fractions and MANIFEST_VERSION, and ``folds``/``fold`` when folds are used (so the paper
    split's manifests keep their names). Row order and metadata columns do not change it; a change of
    grouping (e.g. ISIC by patient) changes the groups, hence the key: a new manifest, the old one kept."""
    fr = _check_fractions(fractions)
    check_folds(folds, fold)
    _check_columns(records, KEY_COLUMNS, "records")
    rows = records[KEY_COLUMNS].astype(str).sort_values(KEY_COLUMNS, kind="mergesort")
    h = hashlib.sha256()
    scheme = f"|folds={int(folds)}|fold={int(fold)}" if folds else ""
    h.update(f"domgen-manifest-v{MANIFEST_VERSION}|seed={int(seed)}|fractions={[round(f, 12) for f in fr]}{scheme}\n".encode())
    # One line per row, fields joined by a unit separator (no field holds one).
    lines = rows["path"] + "\x1f" + rows["label"] + "\x1f" + rows["domain"] + "\x1f" + rows["group"]
    if OFFICIAL in records.columns:  # only then: every other manifest keeps its key
        lines = lines + "\x1f" + records.loc[rows.index, OFFICIAL].astype(str)
    h.update("\n".join(lines.tolist()).encode())
    return h.hexdigest()[:20]


def manifest_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "manifests" / f"{key}.csv"


def build_manifest(records: pd.DataFrame, seed: int, fractions=DEFAULT_FRACTIONS, folds: int = 0, fold: int = 0) -> pd.DataFrame:
    """The records with a ``split`` column (:func:`split_records`), MANIFEST_COLUMNS first, rows sorted by
    (domain, path)."""
    out = records.copy()
    if "image_id" not in out.columns:
        out["image_id"] = out["path"].map(lambda p: Path(str(p)).stem)
    out["split"] = split_records(records, seed, fractions, folds, fold)
    if OFFICIAL in out.columns:  # a release's own splits (MedMNIST) are kept as given, never re-drawn
        given = out[OFFICIAL].notna() & out[OFFICIAL].isin(SPLITS)
        out.loc[given, "split"] = out.loc[given, OFFICIAL]
    for c in ("path", "domain", "label", "group", "image_id"):
        out[c] = out[c].astype(str)
    meta = [c for c in out.columns if c not in MANIFEST_COLUMNS]
    out = out[MANIFEST_COLUMNS + meta].sort_values(["domain", "path"], kind="mergesort")
    return out.reset_index(drop=True)


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as CSV to a temporary file beside ``path``, then rename it over ``path``: a reader
    sees either no manifest or a whole one, even if two runs race or one is killed mid-write."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_manifest(path: Path) -> pd.DataFrame:
    """A manifest CSV with its identifier columns kept as strings ("007" stays "007", "NA" stays "NA")
    and empty metadata cells read back as NaN."""
    header = pd.read_csv(path, nrows=0).columns
    text_cols = [c for c in header if c in MANIFEST_COLUMNS]
    frame = pd.read_csv(
        path,
        dtype={c: str for c in text_cols},
        keep_default_na=False,
        na_values={c: [""] for c in header if c not in MANIFEST_COLUMNS},
    )
    _check_columns(frame, MANIFEST_COLUMNS, f"manifest {path}")
    return frame


def load_or_build_manifest(
    records: pd.DataFrame, cache_dir: Path, seed: int, fractions=DEFAULT_FRACTIONS, folds: int = 0, fold: int = 0
) -> pd.DataFrame:
    """The manifest at ``<cache_dir>/manifests/<manifest_key>.csv``, built and written atomically when
    absent (or unreadable, or of the wrong length), and read back from that file either way."""
    path = manifest_path(cache_dir, manifest_key(records, seed, fractions, folds, fold))
    if path.is_file():
        try:
            frame = read_manifest(path)
        except (KeyError, ValueError, pd.errors.ParserError):
            frame = None
        if frame is not None and len(frame) == len(records):
            return frame
    _write_atomic(build_manifest(records, seed, fractions, folds, fold), path)
    # Read back, so a first call returns exactly what every later call will (CSV dtypes included).
    return read_manifest(path)


# ------------------------------------------------------------------------------------------ nsec pools


def parse_nsec(value: int | str) -> int | str:
    """``nsec`` of the paper: an int 0..5 (or its digit string), or "a"/"all" (returned as "a")."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        n = int(value)
    elif isinstance(value, str) and value.strip().lower() in ("a", "all"):
        return "a"
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    else:
        raise ValueError(f"nsec must be an integer 0..{NSEC_MAX} or 'a'/'all'; got {value!r}")
    if not 0 <= n <= NSEC_MAX:
        raise ValueError(f"nsec must be an integer 0..{NSEC_MAX} or 'a'/'all'; got {value!r}")
    return n


def _row_keys(paths: pd.Series, domains: pd.Series, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per row, from its own (domain, path) only: the order it induces
    within a class does not depend on row order or on which other images are present."""
    return np.array(
        [derive_seed("nsec", seed, d, p, **_SPLIT_SEED) for d, p in zip(domains, paths)], dtype=np.uint64
    )


def nsec_subset(manifest: pd.DataFrame, nsec: int | str, seed: int, primary: str | None = PRIMARY_DOMAIN) -> pd.Series:
    """Boolean mask (aligned with ``manifest.index``) of the paper's training pool: every training image
    of ``primary`` plus, from each other domain, ``nsec`` training images per class (all of them when a
    class has fewer; every training image of every domain when nsec = "a" or, DomainBed's pool, when
    ``primary`` is None).

    Nested by construction: within each (domain, class) the training images are ranked by a seeded key
    and the first k are taken, so the pool for k is contained in the pool for k + 1 and in "a".
    """
    k = parse_nsec(nsec)
    _check_columns(manifest, ["path", "domain", "label", "split"], "manifest")
    domains = manifest["domain"].astype(str)
    if primary is not None and primary not in set(domains):
        raise ValueError(f"primary domain {primary!r} is not in the manifest (domains: {sorted(set(domains))}); "
                         "choose one with --set data.primary=DOMAIN, or data.primary=none to train on every domain")
    train = manifest["split"].astype(str).eq("train")
    if k == "a" or primary is None:
        return train.rename("nsec")
    keep = (train & domains.eq(primary)).to_numpy(dtype=bool, copy=True)
    pos = np.flatnonzero((train & domains.ne(primary)).to_numpy())  # positions, safe for any index
    if k > 0 and len(pos):
        others = manifest.iloc[pos][["domain", "label", "path"]].astype(str).set_axis(pos)
        others = others.assign(key=_row_keys(others["path"], others["domain"], seed))
        others = others.sort_values(["domain", "label", "key", "path"], kind="mergesort")
        rank = others.groupby(["domain", "label"], sort=False).cumcount().to_numpy()  # 0-based in a class
        keep[others.index.to_numpy()[rank < k]] = True
    return pd.Series(keep, index=manifest.index, name="nsec")


def training_pool(
    manifest: pd.DataFrame,
    nsec: int | str,
    seed: int,
    primary: str | None = PRIMARY_DOMAIN,
    exclude: Iterable[str] = (),
) -> pd.DataFrame:
    """The rows of ``nsec_subset`` minus every row of the held-out domains in ``exclude`` (leave-one-
    domain-out). An excluded domain absent from the manifest is an error, so a typo cannot leak it."""
    exclude = set(exclude)
    present = set(manifest["domain"].astype(str))
    unknown = exclude - present
    if unknown:
        raise ValueError(f"exclude names domain(s) {sorted(unknown)} not in the manifest (domains: {sorted(present)})")
    mask = nsec_subset(manifest, nsec, seed, primary) & ~manifest["domain"].astype(str).isin(exclude)
    return manifest.loc[mask]


def group_fraction(rows: pd.DataFrame, fraction: float, seed: int, domains: Iterable[str] | None = None) -> pd.Series:
    """Boolean mask (aligned with ``rows.index``) keeping about ``fraction`` of the images of ``domains``
    (all of ``rows``' when None) and every row of the other domains: the low-data arm of a study.

    Whole lesion groups, never part of one (the splits' grouping, so a subset holds no half-lesion), per
    (domain, class) of each group's majority label (:func:`_group_table`), so every class keeps at least
    one group: within each, the groups in a seeded order (a key from the (domain, group) alone, so the
    order does not depend on the other rows) are taken until their images reach ``fraction`` of the
    class's. Nested: a smaller fraction keeps a subset of a larger one's groups."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keep = pd.Series(True, index=rows.index, name="fraction")
    if fraction == 1 or rows.empty:
        return keep
    chosen = rows["domain"].astype(str).isin(set(domains)) if domains is not None else keep.copy()
    rec = rows.loc[chosen, ["domain", "group", "label"]].astype(str)
    groups = _group_table(rec)
    groups["key"] = [derive_seed("fraction", seed, d, g, **_SPLIT_SEED) for d, g in zip(groups["domain"], groups["group"])]
    groups = groups.sort_values(["domain", "label", "key", "group"], kind="mergesort")
    total = groups.groupby(["domain", "label"], sort=False)["size"].transform("sum")
    before = groups.groupby(["domain", "label"], sort=False)["size"].cumsum() - groups["size"]  # images ahead of it
    taken = groups.loc[before < fraction * total, ["domain", "group"]]  # the first group always (0 < f * total)
    kept = pd.MultiIndex.from_frame(rec[["domain", "group"]]).isin(pd.MultiIndex.from_frame(taken))
    keep.loc[chosen] = kept
    return keep


def class_availability(records: pd.DataFrame, classes: Iterable[str] = CLASSES) -> pd.DataFrame:
    """Images per domain (rows: DOMAINS order, then any others sorted) and class (columns: ``classes``,
    the label space's order). A zero marks a class the domain does not have (the domain-class imbalance
    of the paper, Table 1)."""
    _check_columns(records, ["domain", "label"], "records")
    classes = list(classes)
    unknown = sorted(set(records["label"].astype(str)) - set(classes))
    if unknown:
        raise ValueError(f"labels outside the label space {classes}: {unknown}")
    table = pd.crosstab(records["domain"].astype(str), records["label"].astype(str))
    present = list(table.index)
    rows = [d for d in DOMAINS if d in present] + sorted(d for d in present if d not in DOMAINS)
    table = table.reindex(index=rows, columns=classes, fill_value=0).astype(np.int64)
    table.index.name, table.columns.name = "domain", "label"
    return table
