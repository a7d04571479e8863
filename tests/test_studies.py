"""Studies as data: experiments/yoon2019.yaml resolves to exactly the configs (and run-folder hashes)
the Python registry resolved before the move (tests/data/yoon2019_resolved.json, dumped by
tools/dump_resolved.py); study files are found by name, by path and in $DOMGEN_EXPERIMENTS; every
mistake in a study file is one ConfigError naming the file and the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_SCALE
from domgen.config import config_hash, to_dict
from domgen.errors import ConfigError
from domgen.runs.registry import EXPERIMENTS, PRESETS, resolve_config
from domgen.studies import REPO_EXPERIMENTS, find_study, load_study

SNAPSHOT = json.loads((Path(__file__).parent / "data" / "yoon2019_resolved.json").read_text())


@pytest.mark.parametrize("key", sorted(SNAPSHOT))
def test_yoon2019_yaml_resolves_to_the_snapshot(key):
    exp, preset = key.split("/")
    cfg = resolve_config(exp, preset, seed=0)
    got = to_dict(cfg)
    # the two fields the move adds: which study, and (for a study given as a path) its file
    assert (got.pop("study"), got.pop("study_file")) == ("yoon2019", "")
    assert got == SNAPSHOT[key]["config"]
    assert config_hash(cfg, "synthetic:snapshot") == SNAPSHOT[key]["hash"]  # run folders keep their names


def test_the_dump_tool_reproduces_the_snapshot():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dump_resolved", REPO_EXPERIMENTS.parent / "tools" / "dump_resolved.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.dump() == SNAPSHOT


def test_snapshot_covers_22_rows_by_3_presets():
    assert len(SNAPSHOT) == 66 and EXPERIMENTS.names() == list("ABCDEFGHIJKLMNOPQRSTUV")
    assert sorted(PRESETS) == ["paper", "quick", "smoke"]
    assert [EXPERIMENTS.get(e).driver for e in "KUV"] == ["train", "prune", "prune"]
    assert load_study().loo == {"DMF": "O", "D7P": "P", "MSK": "Q", "PH2": "R", "SON": "S", "UDA": "T"}


MINE = """\
study: mine
experiments:
  - {name: base, description: from scratch, nsec: a}
  - {name: tuned, parent: base, algorithm: ccsa, nsec: a, set: [optim.lr=0.5]}
"""


def test_a_study_by_path_by_env_and_its_hash(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text(MINE)
    cfg = resolve_config("tuned", "smoke", 0, study=str(path))
    # presets.yaml is not beside it: the repository's is used
    assert (cfg.study, cfg.study_file, cfg.warm_start, cfg.optim.lr, cfg.optim.epochs) == ("mine", str(path), "base", 0.5, 2)
    # the same row in another study is another run: the study name enters the hash when not the default
    renamed = tmp_path / "other.yaml"
    renamed.write_text(MINE.replace("study: mine", "study: other"))
    assert config_hash(cfg, "d") != config_hash(resolve_config("tuned", "smoke", 0, study=str(renamed)), "d")
    # but the file's location does not
    moved = tmp_path / "sub" / "mine.yaml"
    moved.parent.mkdir()
    moved.write_text(MINE)
    assert config_hash(cfg, "d") == config_hash(resolve_config("tuned", "smoke", 0, study=str(moved)), "d")
    with pytest.raises(ConfigError, match="unknown study 'mine'.*known: .*yoon2019"):
        find_study("mine")
    monkeypatch.setenv("DOMGEN_EXPERIMENTS", str(tmp_path))
    assert find_study("mine") == path.resolve() and find_study("yoon2019") == REPO_EXPERIMENTS / "yoon2019.yaml"
    assert resolve_config("tuned", "smoke", 0, study="mine").study_file == ""  # its name finds it now


def test_a_non_editable_install_finds_the_study_files_it_carries(tmp_path, monkeypatch):
    """pyproject's data-files ship every study of experiments/ to <prefix>/share/domgen/experiments, where
    find_study looks when the repository is not beside the package (a wheel install)."""
    import shutil
    import sys
    import tomllib

    import domgen.studies as studies

    shipped = tomllib.loads((REPO_EXPERIMENTS.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert sorted(shipped["share/domgen/experiments"]) == sorted(
        f"experiments/{p.name}" for p in REPO_EXPERIMENTS.iterdir() if p.suffix in (".yaml", ".md"))
    share = tmp_path / "share" / "domgen" / "experiments"
    share.mkdir(parents=True)
    for name in ("yoon2019.yaml", "presets.yaml"):
        shutil.copy(REPO_EXPERIMENTS / name, share / name)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(studies, "REPO_EXPERIMENTS", tmp_path / "no-repository")
    monkeypatch.delenv("DOMGEN_EXPERIMENTS", raising=False)
    assert find_study("yoon2019") == share / "yoon2019.yaml"


def test_a_study_may_bring_its_own_preset(tmp_path):
    path = tmp_path / "p.yaml"
    smoke = (REPO_EXPERIMENTS / "presets.yaml").read_text().split("smoke:")[1]
    tiny = "".join(f"  {line}\n" for line in smoke.replace("epochs_base: 2", "epochs_base: 7").splitlines())
    path.write_text(MINE + "presets:\n  tiny:" + tiny)
    assert resolve_config("base", "tiny", 0, study=str(path)).optim.epochs == 7
    assert sorted(load_study(str(path)).presets) == ["paper", "quick", "smoke", "tiny"]


BAD = [
    ("experiments: [{name: a, nsec: a}\n", r"bad\.yaml line 2: not valid YAML"),
    ("experiments: []\n", r"bad\.yaml: 'experiments:' must be a non-empty list"),
    ("experiment: [{name: a}]\n", r"bad\.yaml, the study: unknown key 'experiment'"),
    ("experiments: [{name: a, parnet: b}]\n", r"bad\.yaml, row 'a': unknown key 'parnet' \(known: .*parent"),
    ("experiments: [{name: a}, {name: b, parent: c}]\n", r"bad\.yaml, row 'b': unknown parent 'c' \(rows: a, b\)"),
    ("experiments: [{name: a, parent: b}, {name: b, parent: a}]\n", r"bad\.yaml, row 'a': parents form a cycle \(a -> b -> a\)"),
    ("experiments: [{name: a}, {name: a}]\n", r"bad\.yaml, row 'a': the name is used twice"),
    ("experiments: [{name: a, driver: eval}]\n", r"bad\.yaml, row 'a': driver 'eval' is not one of train, prune"),
    ("experiments: [{name: a, driver: prune}]\n", r"bad\.yaml, row 'a': a prune row needs a parent"),
    ("experiments: [{name: a, set: [optim.lr]}]\n", r"bad\.yaml, row 'a': set item 'optim.lr' is not KEY=VALUE"),
    ("experiments: [{name: a-b}]\n", r"bad\.yaml, row 'a-b': a row name is letters, digits"),
    ("experiments: [{description: x}]\n", r"bad\.yaml, row 1: a row is a mapping with at least a 'name:'"),
    ("experiments: [{name: a}]\npresets: {p: {weights: none}}\n", r"bad\.yaml, preset 'p': missing batch_size"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(": ", 1)[-1][:30] for _, m in BAD])
def test_bad_study_files_are_one_line_errors_naming_file_and_row(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_study(str(path))
    assert "\n" not in str(err.value)


def test_a_bad_set_item_is_named_by_file_and_row(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("experiments: [{name: a, set: [optim.lrr=1]}]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml, row 'a': unknown config key 'optim\.lrr'"):
        resolve_config("a", "smoke", study=str(path))


# ---- a study written here runs through `sweep` ---------------------------------------------------
TINY = """\
study: tiny
description: a baseline and a CCSA row warm-started from it
experiments:
  - {name: base, description: ERM on every source, nsec: a}
  - {name: tuned, description: CCSA from base, nsec: a, algorithm: ccsa, parent: base, set: [optim.epochs=1]}
"""


@pytest.mark.slow
def test_a_study_yaml_written_here_runs_through_sweep(tmp_path, tiny_cache, monkeypatch, capsys):
    from domgen.engine.logging import read_results
    from domgen.results.collect import collect, select
    from domgen.run import main

    monkeypatch.delenv("DOMGEN_DATA", raising=False)
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY)
    runs = tmp_path / "runs"
    # on 1/20 of the synthetic benchmark (tiny_cache): the order, the rows' own settings and the table do not depend on its size
    argv = ["sweep", "--study", str(study), "--preset", "smoke", "--seeds", "1", "--out", str(runs), "--cache-dir",
            str(tiny_cache), "--scale", str(TINY_SCALE), "--set", "threads=1", "--set", "data.workers=0"]
    assert main(argv) == 0
    base, tuned = (next(runs.glob(f"{e}-s0-*")) for e in ("base", "tuned"))
    assert (base / "done").exists() and (tuned / "done").exists()
    # dependency order: the child started (wrote its config) after its parent was done, and loaded its best
    assert (base / "done").stat().st_mtime <= (tuned / "config.yaml").stat().st_mtime
    rows = {r["exp"]: r for d in (base, tuned) for r in read_results(d) if r["stage"] == "final" and r["split"] == "test"}
    assert (rows["base"]["algorithm"], rows["tuned"]["algorithm"], rows["tuned"]["study"]) == ("erm", "ccsa", "tiny")
    epochs = [r["epoch"] for r in read_results(tuned) if r["stage"] == "val"]
    assert max(epochs) == 1  # the row's own `set:` (optim.epochs=1) was applied; base ran the preset's 2
    assert max(r["epoch"] for r in read_results(base) if r["stage"] == "val") == 2
    df = collect(runs)
    assert set(select(df, study="tiny")["exp"]) == {"base", "tuned"} and select(df, study="yoon2019").empty
    capsys.readouterr()
    assert main(["table", "--runs", str(runs), "--study", str(study)]) == 0
    table = capsys.readouterr().out
    assert "Study: tiny." in table and table.index("| base") < table.index("| tuned")
    # a second sweep finds both done and launches nothing
    capsys.readouterr()
    assert main(argv) == 0
    assert "2/2 runs done" in capsys.readouterr().out


def test_list_and_train_take_study(tmp_path, capsys):
    from domgen.run import main

    path = tmp_path / "mine.yaml"
    path.write_text(MINE)
    assert main(["list", "--study", str(path)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["base", "tuned"]
    assert main(["train", "--study", "nope", "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "error: unknown study 'nope'" in err and "known: " in err and "yoon2019" in err.split("known: ")[1]
    assert main(["prune", "--study", str(path), "--exp", "tuned", "--preset", "smoke"]) == 2
    assert "not tuned" in capsys.readouterr().err  # prune runs a row whose driver is prune


def test_the_imbalance_study_crosses_sampler_loss_and_weights_including_the_stacked_corrections():
    from domgen.sweep.grid import grid_cells

    study = load_study("imbalance")
    assert study.protocol.positive == ("mel", "bcc", "akiec") and study.ablation.exp == "erm"
    cells = grid_cells(study.ablation.axes)
    assert len(cells) == 3 * 3 * 2
    cfgs = [resolve_config("erm", "smoke", 0, list(c.items), study=study) for c in cells]
    assert len({config_hash(c, "x") for c in cfgs}) == 18  # every cell its own run
    stacked = [c for c in cfgs if c.algorithm.sampler == "class_balanced" and c.loss.name == "focal"]
    assert len(stacked) == 2 and {c.loss.weighted for c in stacked} == {False, True}
    assert resolve_config("ccsa", "smoke", 0, study=study).warm_start == "A"
