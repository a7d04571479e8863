"""Model selection applied afterwards to recorded rows: train, oracle and lodo pick the epochs (and trials)
worked out by hand below; tables and compare by algorithm read what they pick. Nothing is trained.

A leave-one-out family holds out HAM, DMF and PH2 in turn (three runs, three epochs). Each run's
validation macro recall by epoch:

    run holding out  own held-out domain   training domains          mean over training domains
    HAM              HAM 50 70 60          DMF 80 60 60, PH2 70x3    75 65 65  -> train: epoch 1
    DMF              DMF 40 50 80          HAM 60 90 60, PH2 60x3    60 75 60  -> train: epoch 2
    PH2              PH2 60 40 50          HAM 50 80 50, DMF 50x3    50 65 50  -> train: epoch 2

oracle (own held-out column): HAM run epoch 2, DMF run epoch 3, PH2 run epoch 1.
lodo (mean of the siblings' held-out columns): HAM run (40 50 80 + 60 40 50) / 2 = 50 45 65 -> epoch 3;
DMF run (50 70 60 + 60 40 50) / 2 = 55 55 55 -> tie, earliest: epoch 1; PH2 run (50 70 60 + 40 50 80) / 2
= 45 60 70 -> epoch 3. Test macro recall = base(run) + 10 * epoch + k(domain) + shift, base HAM-run 0,
DMF-run 40, PH2-run 60, k HAM 1, DMF 2, PH2 3, so every reported number says which run and epoch it is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from domgen import run as cli
from domgen.results.by_algorithm import algorithm_frame, algorithm_table, by_algorithm
from domgen.results.collect import collect
from domgen.results.compare import compare, format_compare
from domgen.results.selection import SELECTIONS, SelectionError, SiblingsPending, select_rows, selected_epochs
from domgen.results.tables import table2

DOMS = ("HAM", "DMF", "PH2")
HELD_VAL = {"HAM": [50, 70, 60], "DMF": [40, 50, 80], "PH2": [60, 40, 50]}
TRAIN_VAL = {"HAM": {"DMF": [80, 60, 60], "PH2": [70, 70, 70]},
             "DMF": {"HAM": [60, 90, 60], "PH2": [60, 60, 60]},
             "PH2": {"HAM": [50, 80, 50], "DMF": [50, 50, 50]}}
TRAIN_EPOCH = {"HAM": 1, "DMF": 2, "PH2": 2}  # what the trainer chose (final rows' epoch)
BASE, K = {"HAM": 0, "DMF": 40, "PH2": 60}, {"HAM": 1, "DMF": 2, "PH2": 3}
EXP = {"HAM": "O", "DMF": "P", "PH2": "R"}


def write(root: Path, name: str, ctx: dict, val: dict, test: dict, final_epoch: int, *, per_epoch_test=True,
          done=True) -> None:
    """A run folder as the trainer leaves it: per-epoch rows (val split; test split too when recorded), final
    rows at the trainer's epoch, ``done``. ``val``/``test``: domain -> values at epochs 1..3."""
    rows = []
    for e in (1, 2, 3):
        rows += [ctx | dict(epoch=e, stage="val", split="val", domain=d, macro_recall=v[e - 1]) for d, v in val.items()]
        if per_epoch_test:
            rows += [ctx | dict(epoch=e, stage="val", split="test", domain=d, macro_recall=v[e - 1]) for d, v in test.items()]
    for split, values in (("val", val), ("test", test)):
        rows += [ctx | dict(epoch=final_epoch, stage="final", split=split, domain=d, macro_recall=v[final_epoch - 1])
                 for d, v in values.items()]
    (root / name).mkdir(parents=True)
    (root / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        (root / name / "done").write_text("{}\n")


def context(exp, seed, family, search, algorithm, holdout, train_domains, **extra) -> dict:
    return dict(exp=exp, seed=seed, preset="smoke", config_hash=f"{family}{exp}", family=family, search=search,
                data="synthetic:/x", synthetic=True, arch="resnet18", nsec="a", algorithm=algorithm, loss="ce",
                holdout=list(holdout), train_domains=list(train_domains)) | extra


def loo_run(root: Path, held: str, seed: int = 0, *, family="f1", search="s-erm", algorithm="erm", shift=0.0,
            held_shift=0, train_shift=0, **kwargs) -> str:
    others = [d for d in DOMS if d != held]
    val = {held: [v + held_shift for v in HELD_VAL[held]]} | {d: [v + train_shift for v in TRAIN_VAL[held][d]] for d in others}
    test = {d: [BASE[held] + 10 * e + K[d] + shift for e in (1, 2, 3)] for d in DOMS}
    name = f"{EXP[held]}-s{seed}-{family}"
    write(root, name, context(EXP[held], seed, family, search, algorithm, [held], others), val, test, TRAIN_EPOCH[held], **kwargs)
    return name


def loo_family(root: Path, seed: int = 0, **kwargs) -> dict[str, str]:
    return {held: loo_run(root, held, seed, **kwargs) for held in DOMS}


def epochs(df, method) -> dict[str, int]:
    picks = selected_epochs(df, method)
    return dict(zip(picks["run"], picks["epoch"]))


def held_value(rows, run: str, domain: str) -> float:
    return float(rows.loc[(rows["run"] == run) & (rows["domain"] == domain), "macro_recall"].item())


def test_each_method_picks_its_own_epoch_and_reports_that_epochs_test_rows(tmp_path):
    runs = loo_family(tmp_path)
    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    h, d, p = runs["HAM"], runs["DMF"], runs["PH2"]
    assert epochs(df, "train") == {h: 1, d: 2, p: 2}
    assert epochs(df, "oracle") == {h: 2, d: 3, p: 1}
    assert epochs(df, "lodo") == {h: 3, d: 1, p: 3}  # DMF run: 55 55 55, the earliest wins
    scores = selected_epochs(df, "lodo").set_index("run")["score"]
    assert scores[h] == pytest.approx(65.0) and scores[d] == pytest.approx(55.0) and scores[p] == pytest.approx(70.0)
    expected = {"train": (11, 62, 83), "oracle": (21, 72, 73), "lodo": (31, 52, 93)}  # base + 10 epoch + k
    for method, (ham, dmf, ph2) in expected.items():
        rows = select_rows(df, method)
        assert len(rows) == 9 and set(rows["selection"]) == {method}  # every domain of each run is reported
        assert (held_value(rows, h, "HAM"), held_value(rows, d, "DMF"), held_value(rows, p, "PH2")) == (ham, dmf, ph2)
    oracle = select_rows(df, "oracle")
    assert held_value(oracle, h, "DMF") == 22 and set(oracle.loc[oracle["run"] == h, "epoch"]) == {2}


def test_lodo_scores_only_epochs_every_sibling_recorded(tmp_path):
    """The PH2 run lost its held-out row at epoch 3 (say, a torn line): the HAM run's lodo curve is then
    epochs 1-2 only, (40 + 60) / 2 = 50 and (50 + 40) / 2 = 45 -> epoch 1. Averaging whatever siblings have a
    row would score epoch 3 by the DMF run alone (80) and pick it."""
    runs = loo_family(tmp_path)
    path = tmp_path / runs["PH2"] / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    lost = [r for r in rows if (r["stage"], r["split"], r["domain"], r["epoch"]) == ("val", "val", "PH2", 3)]
    assert len(lost) == 1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r not in lost))
    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    picks = selected_epochs(df, "lodo").set_index("run")
    assert picks.loc[runs["HAM"], "epoch"] == 1 and picks.loc[runs["HAM"], "score"] == pytest.approx(50.0)
    assert picks.loc[runs["PH2"], "epoch"] == 3  # its own siblings (HAM, DMF runs) are whole: 45 60 70


def test_train_from_per_epoch_rows_equals_the_final_rows_and_works_without_them(tmp_path):
    loo_family(tmp_path)
    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    picks = selected_epochs(df, "train").set_index("run")["epoch"]
    final = df[(df["stage"] == "final") & (df["split"] == "test")]
    for run, epoch in picks.items():
        at = df[(df["run"] == run) & (df["stage"] == "val") & (df["split"] == "test") & (df["epoch"] == epoch)]
        mine = final[final["run"] == run]
        assert set(mine["epoch"]) == {epoch}  # the trainer chose the same epoch
        assert dict(zip(at["domain"], at["macro_recall"])) == dict(zip(mine["domain"], mine["macro_recall"]))
    # a run recorded before per-epoch test rows (and read without validation rows, as Table 2 once was)
    old = tmp_path / "old"
    loo_run(old, "HAM", per_epoch_test=False)
    rows = select_rows(collect(old), "train")
    assert sorted(rows["macro_recall"]) == [11, 12, 13] and set(rows["epoch"]) == {1}


def test_trials_of_one_search_each_method_picks_by_its_own_score(tmp_path):
    # Trial f1b: training-domain scores +10 (train prefers it), the HAM run's own held-out score -10 (oracle
    # prefers f1), the siblings' held-out scores +10 (lodo prefers it); its test values end in .5.
    loo_family(tmp_path)
    loo_run(tmp_path, "HAM", family="f1b", train_shift=10, held_shift=-10, shift=0.5)
    for held in ("DMF", "PH2"):
        loo_run(tmp_path, held, family="f1b", train_shift=10, held_shift=10, shift=0.5)
    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    for method, run, epoch, value in (("train", "O-s0-f1b", 1, 11.5), ("oracle", "O-s0-f1", 2, 21.0),
                                      ("lodo", "O-s0-f1b", 3, 31.5)):
        rows = select_rows(df, method)
        ham_runs = set(rows.loc[rows["exp"] == "O", "run"])
        assert ham_runs == {run}, method  # one trial per (exp, search, holdout, seed)
        assert held_value(rows, run, "HAM") == value and set(rows.loc[rows["run"] == run, "epoch"]) == {epoch}
    picks = selected_epochs(df, "lodo").set_index("run")
    # f1b's HAM run under lodo: siblings (40 50 80 + 60 40 50) / 2 + 10 = 60 55 75 -> 75 beats f1's 65
    assert picks.loc["O-s0-f1b", "score"] == pytest.approx(75.0) and picks.loc["O-s0-f1", "chosen"] == False  # noqa: E712
    assert len(select_rows(df, "train")) == 9  # three holdouts x three domains: one trial each


def test_errors_say_what_is_missing(tmp_path):
    plain = tmp_path / "plain"
    write(plain, "A-s0-x", context("A", 0, "fa", "sa", "erm", [], DOMS), {d: [1, 2, 3] for d in DOMS},
          {d: [1, 2, 3] for d in DOMS}, 3)
    df = collect(plain, stages=("val", "final"), splits=("val", "test"))
    with pytest.raises(SelectionError, match="A-s0-x holds none out"):
        select_rows(df, "oracle")
    with pytest.raises(SelectionError, match="exactly one domain"):
        select_rows(df, "lodo")
    lone = tmp_path / "lone"
    loo_run(lone, "HAM")  # no leave-one-out sibling in any seed: not a sweep at all
    with pytest.raises(SelectionError, match=r"O-s0-f1 \(holding out HAM\) needs the finished leave-one-out runs.*loo --holdout all"):
        select_rows(collect(lone, stages=("val", "final"), splits=("val", "test")), "lodo")
    old = tmp_path / "old"
    loo_run(old, "HAM", per_epoch_test=False)
    with pytest.raises(SelectionError, match="O-s0-f1 recorded none at epoch 2.*epoch_eval=all"):
        select_rows(collect(old, stages=("val", "final"), splits=("val", "test")), "oracle")
    with pytest.raises(KeyError, match="did you mean 'oracle'"):
        select_rows(df, "oracel")
    assert set(cli.SELECTIONS) == set(SELECTIONS.names())  # the CLI spells the registry's names


@pytest.fixture
def two_algorithms(tmp_path) -> Path:
    """erm and coral leave-one-out sweeps, seeds 0 and 1; test shifts erm 0, 4 and coral 5, 7."""
    for seed, (erm, coral) in enumerate([(0.0, 5.0), (4.0, 7.0)]):
        loo_family(tmp_path, seed, shift=erm)
        loo_family(tmp_path, seed, family="fc", search="s-coral", algorithm="coral", shift=coral)
    return tmp_path


def md_row(md: str, first: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_by_algorithm_loo_columns_mean_std_and_caption(two_algorithms):
    df = collect(two_algorithms, stages=("val", "final"), splits=("val", "test"))
    md = algorithm_table(df)
    assert md_row(md, "Algorithm") == ["Algorithm", "HAM", "DMF", "PH2", "avg", "seeds"]
    # erm, train: HAM 11, 15 -> 13.0 +/- 4/sqrt(2) = 2.8; DMF 62, 66; PH2 83, 87;
    # avg per seed (11 + 62 + 83) / 3 = 52 and 56 -> 54.0 +/- 2.8. coral: HAM 16, 18 -> 17.0 +/- 1.4, avg 57, 59.
    assert md_row(md, "erm") == ["erm", "13.0 ± 2.8*", "64.0 ± 2.8*", "85.0 ± 2.8*", "54.0 ± 2.8", "2"]
    assert md_row(md, "coral") == ["coral", "17.0 ± 1.4*", "68.0 ± 1.4*", "89.0 ± 1.4*", "58.0 ± 1.4", "2"]
    assert md.index("| coral |") < md.index("| erm |")
    assert "Model selection: training-domain validation (train)" in md and "Preset: smoke." in md
    assert "Columns: the held-out domains (HAM DMF PH2), each cell from the runs holding that domain out" in md
    assert "over training seeds" in md and "Seeds: 0 1." in md and "synthetic benchmark" in md
    # lodo: HAM runs at epoch 3 (31, 35), DMF runs at epoch 1 (52, 56), PH2 runs at epoch 3 (93, 97)
    lodo = algorithm_table(df, selection="lodo")
    assert md_row(lodo, "erm")[1:5] == ["33.0 ± 2.8*", "54.0 ± 2.8*", "95.0 ± 2.8*", "60.7 ± 2.8"]
    assert "Model selection: leave-one-domain-out validation (lodo)" in lodo
    oracle = algorithm_table(df, selection="oracle")
    assert "by algorithm (an upper bound, not a result)" in oracle and "UPPER BOUND" in oracle
    frame = algorithm_frame(by_algorithm(df))
    assert frame.loc["erm", "HAM_std"] == pytest.approx(4 / math.sqrt(2)) and frame.loc["coral", "avg_mean"] == pytest.approx(58.0)


def test_table_by_algorithm_same_holdout_stars_and_averaging_label(tmp_path):
    for seed, v in enumerate((70, 72)):
        for tag, extra in (("a", {"average": "swad"}), ("b", {"average": "none"})):
            ctx = context("E", seed, f"f{tag}", f"s{tag}", "erm", ["DMF"], ["HAM", "PH2"], **extra)
            test = {"HAM": [v] * 3, "DMF": [v - 10] * 3, "PH2": [v - 20 + (tag == "b")] * 3}
            write(tmp_path, f"E-s{seed}-{tag}", ctx, {d: [1, 2, 3] for d in DOMS}, test, 3)
    md = algorithm_table(collect(tmp_path, stages=("val", "final"), splits=("val", "test")))
    # HAM 70, 72 -> 71.0 +/- 1.4; DMF (held out, starred) 60, 62; avg per seed (70 + 60 + 50) / 3 = 60 and 62.
    assert md_row(md, "erm+swad") == ["erm+swad", "71.0 ± 1.4", "61.0 ± 1.4*", "51.0 ± 1.4", "61.0 ± 1.4", "2"]
    assert md_row(md, "erm")[3] == "52.0 ± 1.4" and "* = held out of training and selection" in md


def test_runs_beside_a_sweep_are_left_out_and_said_so_mixed_holdouts_and_clashes_refused(tmp_path):
    loo_family(tmp_path)
    plain = dict(val={d: [1, 2, 3] for d in DOMS}, test={d: [1, 2, 3] for d in DOMS}, final_epoch=3)
    write(tmp_path, "A-s0-x", context("A", 0, "fx", "sx", "erm", [], DOMS), **plain)  # the sweep's parent
    write(tmp_path, "C-s0-x", context("C", 0, "fc", "sc", "coral", [], DOMS), **plain)  # coral ran no sweep
    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    res = by_algorithm(df, selection="lodo")  # the parent holds nothing out: lodo could not score it
    assert res.left_out == ["A-s0-x", "C-s0-x"] and list(res.wide.index) == [("erm", 0)]
    md = algorithm_table(df, selection="lodo")
    assert md_row(md, "erm")[1:4] == ["31.0*", "52.0*", "93.0*"] and "| coral |" not in md
    assert "Left out: 2 run(s) holding no single domain out beside the leave-one-out sweeps" in md
    mixed = tmp_path / "mixed"
    loo_run(mixed, "DMF")
    write(mixed, "A-s0-x", context("A", 0, "fx", "sx", "erm", [], DOMS), **plain)
    with pytest.raises(SelectionError, match="erm's runs hold out different sets of domains \\(none; DMF\\)"):
        by_algorithm(collect(mixed, stages=("val", "final"), splits=("val", "test")))
    again = tmp_path / "again"
    loo_family(again)
    loo_family(again, family="f2", search="s-other")  # another setting of erm, not a trial of the same search
    with pytest.raises(SelectionError, match="3 cells .* e.g. erm seed 0 DMF: P-s0-f1, P-s0-f2"):
        by_algorithm(collect(again, stages=("val", "final"), splits=("val", "test")))


def test_compare_by_algorithm_pairs_seeds_per_held_out_domain(two_algorithms):
    df = collect(two_algorithms, stages=("val", "final"), splits=("val", "test"))
    res = compare(df, "coral", "erm")
    # coral - erm per seed: 5, 3 on every column -> mean 4, sd sqrt(2), n 2; t = 4 / (sqrt(2) / sqrt(2)) = 4 on
    # 1 df, whose two-sided p is 1 - (2 / pi) atan(4); the CI half-width is t_{0.975,1} * sqrt(2) / sqrt(2).
    assert list(res.index) == ["HAM", "DMF", "PH2", "avg"] and res.attrs["by"] == "algorithm"
    ham = res.loc["HAM"]
    assert ham["n"] == 2 and ham["diff"] == pytest.approx(4.0) and ham["sd"] == pytest.approx(math.sqrt(2))
    assert ham["t_p"] == pytest.approx(1 - 2 / math.pi * math.atan(4.0))
    assert ham["ci_high"] == pytest.approx(4.0 + stats.t.ppf(0.975, 1)) and ham["mean_b"] == pytest.approx(13.0)
    assert res.loc["avg", "diff"] == pytest.approx(4.0) and res.loc["avg", "mean_a"] == pytest.approx(58.0)
    lodo = compare(df, "coral", "erm", selection="lodo")
    assert lodo.loc["HAM", "mean_a"] == pytest.approx((36 + 38) / 2)  # epoch 3: 31 + 5 and 31 + 4 + 3
    text = format_compare(df, "coral", "erm", selection="oracle")
    assert "coral - erm: test macro_recall (x100), paired by seed (an upper bound, not a result)." in text
    assert "Model selection: test-domain validation (oracle)" in text and "columns = held-out domains" in text
    with pytest.raises(KeyError, match="no finished runs of algorithm 'sgd' \\(have: coral, erm\\)"):
        compare(df, "sgd", "erm")


def test_cli_table_and_compare_name_the_selection(two_algorithms, capsys):
    assert cli.main(["table", "--runs", str(two_algorithms), "--by", "algorithm", "--selection", "lodo"]) == 0
    out = capsys.readouterr().out
    assert md_row(out, "erm")[1] == "33.0 ± 2.8*" and "(lodo)" in out
    # --seeds: only those training seeds (seed 0: 31, seed 1: 35 = 31 + its shift of 4), as sweep spells them
    for seeds, value, line in (("1,", "35.0*", "Seeds: 1."), ("1", "31.0*", "Seeds: 0."), ("0-1", "33.0 ± 2.8*", "Seeds: 0 1.")):
        assert cli.main(["table", "--runs", str(two_algorithms), "--by", "algorithm", "--selection", "lodo", "--seeds", seeds]) == 0
        out = capsys.readouterr().out
        assert md_row(out, "erm")[1] == value and line in out, seeds
    assert cli.main(["compare", "coral", "erm", "--runs", str(two_algorithms)]) == 0
    out = capsys.readouterr().out
    assert "| HAM | 2 | 17.00 | 13.00 | +4.00 |" in out and "Model selection: training-domain validation (train)" in out


def test_table2_by_experiment_under_oracle_says_upper_bound(tmp_path):
    for seed in (0, 1):
        loo_family(tmp_path, seed, shift=4.0 * seed)
    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    md = table2(df, selection="oracle")
    assert "Model selection: test-domain validation (oracle), an UPPER BOUND" in md.splitlines()[1]
    # O holds out HAM: oracle epoch 2 -> HAM 21, 25 -> 23.0 +/- 2.8, starred
    assert md_row(md, "O")[6] == "23.0 ± 2.8*"
    assert "Model selection" not in table2(df)  # train: Table 2's captions as they always were


def test_reporting_some_experiments_keeps_every_run_as_a_sibling(tmp_path):
    runs = loo_family(tmp_path)
    write(tmp_path, "A-s0-x", context("A", 0, "fx", "sx", "erm", [], DOMS), {d: [1, 2, 3] for d in DOMS},
          {d: [1, 2, 3] for d in DOMS}, 3)  # the warm-start parent, holding nothing out: lodo cannot score it
    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    rows = select_rows(df, "lodo", exps=["O"])  # P and R are not reported, yet still score O's epochs
    assert set(rows["run"]) == {runs["HAM"]} and held_value(rows, runs["HAM"], "HAM") == 31
    res = compare(df, "O", "P", selection="lodo")  # letters: only O and P are selected, A is left alone
    assert res.attrs["by"] == "exp" and res.loc["HAM", "diff"] == pytest.approx(31 - (40 + 10 + 1))
    assert cli.main(["table", "--runs", str(tmp_path), "--selection", "lodo", "--exps", "O-R"]) == 0
    with pytest.raises(KeyError, match=r"experiment 'K' \(have: A, O, P, R\)"):
        compare(df, "K", "A")


def test_lodo_leaves_out_runs_whose_siblings_are_unfinished_and_names_them(tmp_path):
    """A sweep under way: seed 0 complete; seed 1 has HAM done, DMF still training, PH2 not started. The
    seed-1 runs are left out (their score would change as siblings finish) and named; seed 0 is scored
    exactly as when it is alone, and a finished sibling-less seed never borrows another seed's runs."""
    done = loo_family(tmp_path)
    ham1 = loo_run(tmp_path, "HAM", 1, shift=4.0)
    dmf1 = loo_run(tmp_path, "DMF", 1, shift=4.0, done=False)
    df = collect(tmp_path, stages=("val", "final"), splits=("val", "test"))
    picks = selected_epochs(df, "lodo")
    assert dict(zip(picks["run"], picks["epoch"])) == {done["HAM"]: 3, done["DMF"]: 1, done["PH2"]: 3}
    assert picks.attrs["pending"] == [ham1, dmf1]  # DMF's needs PH2; HAM's needs DMF (unfinished) and PH2
    rows = select_rows(df, "lodo")
    assert set(rows["run"]) == set(done.values()) and rows.attrs["pending"] == [ham1, dmf1]
    # the table by algorithm: seed 0 only, the pending runs named in the caption (finished ones only: an
    # unfinished run is already named as unfinished); the values are seed 0's (31, 52, 93 as above)
    md = algorithm_table(df, selection="lodo")
    assert md_row(md, "erm")[1:] == ["31.0*", "52.0*", "93.0*", "58.7", "1"]
    assert f"Left out: 1 run(s) whose sibling leave-one-out runs (same settings and seed) are not all finished, so their lodo score would change: {ham1}." in md
    # nothing finished can be scored yet: said, not an empty table
    early = tmp_path / "early"
    loo_run(early, "HAM", 0)
    loo_run(early, "DMF", 0, done=False)
    with pytest.raises(SiblingsPending, match=r"every run waits for sibling leave-one-out runs.*O-s0-f1"):
        algorithm_table(collect(early, stages=("val", "final"), splits=("val", "test")), selection="lodo")
