"""The command line speaks to researchers: each command describes itself, every option shows its default,
commands list only the options that mean something to them, and missing pretrained weights fail before
any run folder exists."""

from __future__ import annotations

import argparse
import urllib.error


from domgen import run


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in run.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_description_and_every_option_a_help_with_its_default():
    commands = subparsers()
    assert set(commands) == set(run.DESCRIPTIONS)
    for name, p in commands.items():
        text = p.format_help()
        assert run.DESCRIPTIONS[name].split(":")[0].split(".")[0][:30] in " ".join(text.split()), name
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            shown = action.default is None or action.default is False or action.default == [] or "default" in action.help
            assert shown or f"(default: {action.default})" in " ".join(text.split()), f"{name} {action.dest}"


def test_paper_preset_says_it_needs_imagenet_weights_and_sampler_has_no_run_folder_options():
    commands = subparsers()
    assert "needs ImageNet weights" in " ".join(commands["train"].format_help().split())
    sampler = {o for a in commands["sampler"]._actions for o in a.option_strings}
    assert not sampler & {"--resume", "--restart", "--force", "--wait"}
    assert {"--resume", "--restart", "--force", "--wait"} <= {o for a in commands["train"]._actions for o in a.option_strings}


def test_unavailable_imagenet_weights_fail_in_one_line_before_any_folder(smoke_cache, tmp_path, monkeypatch, capsys):
    import torch

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    out = tmp_path / "runs"
    argv = ["train", "--preset", "smoke", "--weights", "imagenet", "--out", str(out), "--cache-dir", str(smoke_cache),
            "--workers", "0", "--set", "threads=1"]
    assert run.main(argv) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error")]
    assert len(lines) == 1 and lines[0].startswith("error: ImageNet weights for resnet18 are not cached at ")
    assert "--weights PATH" in lines[0]
    assert not out.exists()
    assert run.main(argv[:4] + [str(tmp_path / "nope.pth")] + argv[5:]) == 2
    assert f"--weights {tmp_path / 'nope.pth'}: no such file" in capsys.readouterr().err
    assert not out.exists()


HEAVY = ("torch", "torchvision", "timm", "pandas", "numpy", "scipy", "sklearn", "matplotlib", "tqdm", "submitit")


def test_building_the_parser_and_running_list_import_no_heavy_library():
    """`list` and every `--help` must answer at once: the CLI edge imports torch, pandas, ... only inside the
    command that needs them. Checked in a fresh interpreter, where nothing is imported yet."""
    import json
    import subprocess
    import sys

    code = ("import io, contextlib, json, sys; import domgen.run as r; p = r.parser()\n"
            "[a.choices[c].format_help() for a in p._actions if hasattr(a, 'choices') and isinstance(a.choices, dict) for c in a.choices]\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out: r.main(['list'])\n"
            f"print(json.dumps([sorted(m for m in {HEAVY!r} if m in sys.modules), out.getvalue().splitlines()[0]]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, first_line = json.loads(done.stdout)
    assert heavy == []
    assert first_line.split()[:3] == ["A", "resnet18", "nsec=0"]
