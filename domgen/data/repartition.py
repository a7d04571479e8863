"""Domains re-drawn by a metadata column (``data.domain_by``): the direction Yoon, Hamarneh & Garbi
(MICCAI 2019, Sec. 5) name as future work, domains defined by acquisition or patient attributes rather
than by the dataset an image came from (HAM10000's ``localization`` or ``dx_type``, a skin-tone or
device column of a metadata.csv).

Each value of the column becomes a domain. A group (lesion, case, patient) whose images disagree goes
whole to its most frequent value (ties: the value first in sorted order), so a lesion never straddles
two domains and therefore never two partitions. Images without a value are dropped and counted per
source.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from domgen.data.sources.base import DataLayoutError, LoadResult
from domgen.data.sources.metadata_csv import check_domain_names


def domain_values(records: pd.DataFrame, column: str) -> pd.Series:
    """The new domain of every record (aligned with ``records.index``; "" where it has no value): the
    majority value of its (source domain, group)."""
    value = records[column].fillna("").astype(str).str.strip()
    frame = pd.DataFrame({"domain": records["domain"].astype(str), "group": records["group"].astype(str), "value": value})
    votes = frame[frame["value"] != ""].groupby(["domain", "group", "value"]).size().rename("n").reset_index()
    votes = votes.sort_values(["n", "value"], ascending=[False, True], kind="mergesort")
    winner = votes.drop_duplicates(["domain", "group"]).set_index(["domain", "group"])["value"]
    keys = pd.MultiIndex.from_frame(frame[["domain", "group"]])
    return pd.Series(winner.reindex(keys).fillna("").to_numpy(), index=records.index, name=column)


def repartition(results: dict[str, LoadResult], column: str) -> tuple[dict[str, LoadResult], Counter]:
    """New domain -> its records (sorted by name), and the images dropped per source domain for lacking
    a value. Records keep their metadata; ``source_domain`` records where each came from."""
    frames = [r.records for r in results.values()]
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if column not in records.columns:
        known = sorted(c for c in records.columns if c not in ("path", "label", "domain", "group", "image_id"))
        raise DataLayoutError(f"data.domain_by={column!r}: no loaded source has a column {column!r} "
                              f"(metadata columns: {', '.join(known) or 'none'})")
    new = domain_values(records, column)
    lacking = Counter(records.loc[new == "", "domain"].astype(str))
    records = records.assign(source_domain=records["domain"], domain=new)[new != ""]
    check_domain_names(sorted(set(records["domain"])), "data.domain_by", f"column {column!r}")
    roots = {r.domain: r.root for r in results.values()}
    out = {}
    for value in sorted(set(records["domain"])):
        part = records[records["domain"] == value].reset_index(drop=True)
        root = roots[part["source_domain"].iloc[0]]
        out[value] = LoadResult(f"{column}={value}", value, root, part)
    return out, lacking
