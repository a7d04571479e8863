"""Results side: collect run folders, Table 2 (mean +/- std over seeds), paired comparison, plot.

Fake run folders hold hand-chosen macro recalls, so every number below is computed by hand.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from domgen.data.labels import TABLE2_DOMAINS
from domgen.results.collect import collect, select
from domgen.results.compare import compare, format_compare
from domgen.results.tables import plot_table, pruning_report, table2, table2_frame

EXP_META = {  # exp -> (nsec, algorithm, weighted_cls, weighted_align, holdout); ERM records no weighted_align
    "A": ("0", "erm", True, None, ()),  # the baselines' cross-entropy is weighted (Table 2's "w")
    "D": ("5", "erm", True, None, ()),
    "E": ("a", "erm", False, None, ()),  # as if run with loss.weighted=false
    "K": ("a", "ccsa", True, True, ()),
    "N": ("a", "ccsa", False, False, ()),
    "O": ("a", "ccsa", True, True, ("DMF",)),
    "U": ("a", "ccsa", True, True, ()),
}


def write_run(root: Path, exp: str, seed: int, values: dict[str, float], *, done: bool = True,
              synthetic: bool = True, preset: str = "smoke", extra: dict | None = None, tag: str = "") -> Path:
    """A run folder as the trainer leaves it: val-epoch rows, final val + test rows, ``done``."""
    nsec, algorithm, wc, wa, holdout = EXP_META[exp]
    run = root / f"{exp}-s{seed}-{(tag or 'abc').ljust(10, '0')}"
    run.mkdir(parents=True)
    ctx = dict(exp=exp, seed=seed, preset=preset, config_hash="abc", data="synthetic:/x" if synthetic else "/data",
               synthetic=synthetic, arch="resnet18", nsec=nsec, algorithm=algorithm, loss="ce", weighted_cls=wc,
               holdout=list(holdout), train_domains=["HAM"]) | ({} if wa is None else {"weighted_align": wa})
    rows = [ctx | dict(epoch=1, stage="val", split="val", domain=d, n=10, macro_recall=1.0) for d in values]
    rows += [ctx | dict(epoch=1, stage="final", split="val", domain=d, n=10, macro_recall=2.0) for d in values]
    rows += [ctx | dict(epoch=1, stage="final", split="test", domain=d, n=10, macro_recall=v) | (extra or {})
             for d, v in values.items()]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        (run / "done").write_text("{}\n")
    return run


def seven(others: float, **by_domain: float) -> dict[str, float]:
    return {d: by_domain.get(d, others) for d in TABLE2_DOMAINS}


PRUNE = dict(prune_threshold=1e-4, params=8.5e6, params_before=11.2e6, macs=1.30e9, macs_before=1.82e9,
             channels_kept={"layer1.0": 32, "layer2.0": 64})


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, (ham, rest) in enumerate([(70, 60), (72, 62), (74, 64)]):
        write_run(root, "A", seed, seven(rest, HAM=ham))
    for seed, (ham, rest) in enumerate([(80, 70), (76, 71), (78, 72)]):
        write_run(root / "sweep1", "K", seed, seven(rest, HAM=ham))  # nested sweep folder
    write_run(root, "K", 3, seven(0.0), done=False)  # unfinished: must not enter the table
    write_run(root, "O", 0, seven(66.0, DMF=65.3))
    write_run(root, "U", 0, {"HAM": 75.0, "DMF": 55.0}, extra=PRUNE)
    with open(root / "A-s0-abc0000000" / "results.jsonl", "a") as f:
        f.write('{"exp": "A", "seed": 0, "stage": "final", "split": "te')  # torn by a kill
    killed = root / "K-s9-abc0000000"  # killed mid-training: no final rows, no done
    killed.mkdir()
    (killed / "results.jsonl").write_text(json.dumps({"exp": "K", "seed": 9, "stage": "val", "split": "val"}) + "\n")
    return root


def md_row(md: str, exp: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {exp} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_collect_rows_finished_flag_and_torn_line(runs):
    df = collect(runs)
    # 3 A + 3 K + 1 unfinished K + 1 O runs x 7 domains + U x 2; the torn line and val rows are not there.
    assert len(df) == 8 * 7 + 2
    assert set(df["stage"]) == {"final"} and set(df["split"]) == {"test"}
    assert df.loc[df["seed"] == 3, "finished"].eq(False).all() and df["finished"].sum() == 7 * 7 + 2
    assert sorted(df.attrs["unfinished"]) == ["K-s3-abc0000000", "K-s9-abc0000000"]
    assert "sweep1/K-s0-abc0000000" in set(df["run"])
    both = collect(runs, splits=("val", "test"))
    assert len(both) == 2 * len(df) and both.loc[both["split"] == "val", "macro_recall"].eq(2.0).all()


def test_table2_markdown_cells(runs):
    md = table2(collect(runs), fmt="md")
    header = md_row(md.replace("| Exp |", "| HEADER |"), "HEADER")
    assert header == ["HEADER", "nsec", "arch", "Cl", "Al", "Pr", *TABLE2_DOMAINS, "avg", "seeds"]
    a = md_row(md, "A")
    # HAM: 70, 72, 74 -> 72.0 +/- 2.0; others 60, 62, 64 -> 62.0 +/- 2.0.
    # avg: per-seed means 430/7, 444/7, 458/7 -> mean 63.43, sd exactly 2.0.
    assert a[:6] == ["A", "0", "ResNet-18", "w", "-", "-"]  # weighted CE, no alignment, not pruned
    assert a[6] == "72.0 ± 2.0" and a[7] == "62.0 ± 2.0" and a[13] == "63.4 ± 2.0" and a[14] == "3"
    k = md_row(md, "K")
    # HAM 80, 76, 78 -> 78.0 +/- 2.0; DMF 70, 71, 72 -> 71.0 +/- 1.0.
    # avg: 500/7, 502/7, 510/7 -> mean 72.0, deviations -4/7, -2/7, 6/7 -> sd sqrt((16+4+36)/49/2) = 0.756.
    # (Averaging each domain's std instead would give (2 + 6*1)/7 = 1.1: the per-seed order matters.)
    assert k[3:5] == ["w", "w"] and k[6] == "78.0 ± 2.0" and k[7] == "71.0 ± 1.0"
    assert k[13] == "72.0 ± 0.8" and k[14] == "3"  # the unfinished seed 3 (all zeros) is left out
    o = md_row(md, "O")
    # One seed: plain value; DMF held out -> starred; avg (65.3 + 6*66)/7 = 65.9.
    assert o[7] == "65.3*" and o[6] == "66.0" and o[13] == "65.9" and o[14] == "1"
    u = md_row(md, "U")
    assert u[5] == "1e-4" and u[6] == "75.0" and u[9] == "-" and u[13] == "-"  # missing domains -> "-", no avg
    assert "Data: synthetic benchmark" in md
    assert "Left out: 2 unfinished run(s): K-s3-abc0000000, K-s9-abc0000000." in md
    assert "7 domains (HAM DMF D7P MSK PH2 SON UDA; held-out included" in md
    assert [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ") and "Exp" not in ln] == \
        ["A", "K", "O", "U"]


def test_unfinished_included_on_request(runs):
    frame = table2_frame(collect(runs), include_unfinished=True)
    # HAM of K with the zero seed: (80 + 76 + 78 + 0) / 4 = 58.5 over 4 seeds.
    assert frame.loc["K", "seeds"] == 4 and frame.loc["K", "HAM_mean"] == pytest.approx(58.5)


def test_real_data_has_no_synthetic_caption(tmp_path):
    write_run(tmp_path, "A", 0, seven(60.0), synthetic=False)
    md = table2(collect(tmp_path))
    assert "synthetic" not in md and "Data: real (/data)." in md and "Left out" not in md


def test_csv_round_trips_to_numbers(runs):
    back = pd.read_csv(io.StringIO(table2(collect(runs), fmt="csv")), index_col="exp")
    assert back.loc["A", "HAM_mean"] == 72.0 and back.loc["A", "HAM_std"] == 2.0 and back.loc["A", "HAM_n"] == 3
    assert back.loc["K", "avg_std"] == pytest.approx(math.sqrt(56 / 49 / 2))
    assert back.loc["K", "avg_mean"] == pytest.approx(72.0) and back.loc["O", "holdout"] == "DMF"
    assert math.isnan(back.loc["O", "HAM_std"]) and back.loc["U", "params"] == 8.5e6


def test_latex_is_booktabs_with_one_line_per_experiment(runs):
    tex = table2(collect(runs), fmt="latex")
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex and r"\toprule" in tex
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 4 and body[0].startswith("A & 0 & ResNet-18")
    assert r"72.0 $\pm$ 2.0" in body[0] and "65.3*" in body[2] and body[0].count("&") == 14
    assert "synthetic benchmark" in tex and "K-s3-abc0000000" in tex


def test_several_settings_for_one_seed_refused_until_selected(tmp_path):
    write_run(tmp_path, "A", 0, seven(60.0), preset="smoke", tag="aaa")
    write_run(tmp_path, "A", 0, seven(70.0), preset="quick", tag="bbb")
    df = collect(tmp_path)
    with pytest.raises(ValueError, match="A seed 0"):
        table2(df)
    assert table2_frame(select(df, preset="quick")).loc["A", "HAM_mean"] == 70.0


def test_compare_paired_statistics(runs):
    res = compare(collect(runs), "K", "A")
    ham = res.loc["HAM"]
    # K - A on HAM by seed: 10, 4, 4 -> mean 6, sd sqrt((16 + 4 + 4) / 2) = sqrt(12).
    assert ham["n"] == 3 and ham["diff"] == pytest.approx(6.0) and ham["sd"] == pytest.approx(math.sqrt(12))
    half = stats.t.ppf(0.975, 2) * math.sqrt(12) / math.sqrt(3)
    assert ham["ci_high"] - ham["diff"] == pytest.approx(half) and ham["ci_low"] == pytest.approx(6 - half)
    # Paired t = 6 / (sqrt(12)/sqrt(3)) = 3 on 2 df; for df = 2 the two-sided p is 1 - t / sqrt(t^2 + 2).
    assert ham["t_p"] == pytest.approx(1 - 3 / math.sqrt(11))
    assert math.isnan(ham["wilcoxon_p"])  # 3 seeds: below the Wilcoxon minimum
    # avg: per-seed (500-430)/7, (502-444)/7, (510-458)/7 = 10, 58/7, 52/7 -> mean 60/7.
    assert res.loc["avg", "diff"] == pytest.approx(60 / 7)
    text = format_compare(collect(runs), "K", "A")
    assert "Seeds matched: 3 (0 1 2)" in text and "| HAM | 3 | 78.00 | 72.00 | +6.00 |" in text


def test_compare_matches_seeds_and_one_seed_is_not_a_claim(tmp_path, runs):
    for seed, v in zip((0, 1, 2, 3), (70, 71, 72, 73)):
        write_run(tmp_path, "E", seed, seven(v))
    for seed, v in zip((1, 2, 3, 7), (60, 62, 64, 0)):
        write_run(tmp_path, "D", seed, seven(v))
    res = compare(collect(tmp_path), "E", "D")
    # Matched seeds 1, 2, 3: 71-60, 72-62, 73-64 = 11, 10, 9 -> mean 10; seeds 0 (E) and 7 (D) dropped.
    assert res.loc["HAM", "n"] == 3 and res.loc["HAM", "diff"] == pytest.approx(10.0)
    assert res.loc["HAM", "seeds"] == "1 2 3" and res.loc["HAM", "mean_b"] == pytest.approx(62.0)
    text = format_compare(collect(tmp_path), "E", "D")
    assert "only in E: 0; only in D: 7" in text
    one = compare(collect(runs), "O", "K")  # O has one seed
    assert one.loc["HAM", "n"] == 1 and one.loc["HAM", "diff"] == pytest.approx(66.0 - 80.0)
    assert one[["ci_low", "ci_high", "t_p", "wilcoxon_p"]].isna().all().all()
    assert "a claim cannot rest on one seed" in format_compare(collect(runs), "O", "K")


def test_wilcoxon_from_five_seeds(tmp_path):
    for seed in range(6):
        write_run(tmp_path, "N", seed, seven(60.0 + seed + 0.5 * seed**2))
        write_run(tmp_path, "K", seed, seven(60.0))
    res = compare(collect(tmp_path), "N", "K")
    # Six differences 0.5..27, one of them 0 (seed 0) is dropped by the default zero_method ('wilcox'),
    # leaving 5 all positive: exact two-sided p = 2 / 2^5.
    assert res.loc["HAM", "wilcoxon_p"] == pytest.approx(2 / 2**5)


def test_pruning_report(runs):
    text = pruning_report(collect(runs))
    assert "U seed 0 (U-s0-abc0000000): params 11.20M -> 8.50M (75.9% kept); MACs 1.82G -> 1.30G (71.4% kept)" in text
    assert "channels kept: layer1.0: 32, layer2.0: 64" in text and "K seed" not in text
    assert pruning_report(runs) == text  # a runs folder works as well as a frame


def test_plot_writes_png(runs, tmp_path):
    from matplotlib.image import imread

    out = plot_table(collect(runs), tmp_path / "table2.png")
    img = imread(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and img.ndim == 3 and img.shape[2] == 4 and img.shape[0] > 200


def test_identical_differences_have_no_t_test_p_value():
    from domgen.results.compare import paired_stats

    # two seeds, both 0.03 better: a difference with no spread, so no test (scipy alone would say p = 0)
    same = paired_stats(np.array([0.53, 0.63]), np.array([0.50, 0.60]))
    assert same["diff"] == pytest.approx(0.03) and same["sd"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(same["t_p"])
    # with spread: the paired t-test, t = mean / (sd / sqrt(n)) = 0.02 / (0.01 * sqrt(2) / sqrt(2)) = 2 on 1 df
    spread = paired_stats(np.array([0.53, 0.61]), np.array([0.50, 0.60]))
    assert spread["t_p"] == pytest.approx(2 * (1 - 0.5 - math.atan(2) / math.pi))


def test_table_and_compare_on_other_domains_show_those_domains(tmp_path):
    """Runs on a DomainBed folder (PACS's domains) get their own columns, in sorted order, with avg over
    them; before, the table reindexed to HAM..UDA and showed every cell as "-"."""
    root = tmp_path / "runs"
    pacs = [{"art_painting": 60.0, "photo": 90.0, "sketch": 40.0}, {"art_painting": 62.0, "photo": 88.0, "sketch": 44.0}]
    for seed, values in enumerate(pacs):
        write_run(root, "A", seed, values)
        write_run(root, "D", seed, {d: v - 1.0 - seed for d, v in values.items()})
    df = collect(root)
    frame = table2_frame(df)
    assert frame.attrs["columns"] == ("art_painting", "photo", "sketch", "avg")
    assert frame.attrs["avg_domains"] == ("art_painting", "photo", "sketch")
    assert frame.loc["A", "sketch_mean"] == pytest.approx(42.0) and frame.loc["A", "avg_mean"] == pytest.approx((190 / 3 + 194 / 3) / 2)
    md = table2(df)
    assert "| Exp | nsec | arch | Cl | Al | Pr | art_painting | photo | sketch | avg | seeds |" in md
    assert md_row(md, "A")[6:10] == ["61.0 ± 1.4", "89.0 ± 1.4", "42.0 ± 2.8", "64.0 ± 0.9"]  # avg: 63.33, 64.67
    res = compare(df, "A", "D")
    assert list(res.index) == ["art_painting", "photo", "sketch", "avg"]
    assert res.loc["photo", "diff"] == pytest.approx(1.5)  # seed 0: 1, seed 1: 2


def test_table_columns_keep_table2_layout_and_add_other_domains():
    from domgen.data.labels import domain_order, table_columns

    assert table_columns(["PH2", "HAM"]) == list(TABLE2_DOMAINS)  # every dermoscopy column, "-" where missing
    assert table_columns([]) == list(TABLE2_DOMAINS)
    assert table_columns(["toy", "HAM"]) == [*TABLE2_DOMAINS, "toy"]
    assert table_columns(["sketch", "photo"]) == ["photo", "sketch"]
    assert domain_order(["toy", "UDA", "HAM", "HAM"]) == ["HAM", "UDA", "toy"]
