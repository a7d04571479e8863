"""Re-run the commands whose output the README quotes and diff (or, with --write, replace) the quotes.

Each quoted output sits between ``<!-- readme-output: NAME -->`` and ``<!-- /readme-output -->``:

- ``list``: ``python -m domgen.run list``, verbatim.
- ``algorithms``: ``python -m domgen.run list algorithms``, verbatim.
- ``regimes``: ``python -m domgen.run list regimes``, verbatim.
- ``summary``: ``python -m domgen.run summary`` on the synthetic default (the cache path shown as ~).
- ``main-job``: ``loo --holdout PH2 --preset quick``; the README abbreviates the epoch lines, so only the
  opening ``data:`` line and the table (from its ``exp`` header on) are compared (minutes on a CPU;
  skipped with --quick).
- ``table``: ``table`` over the main job's runs (needs main-job; skipped with --quick).
- ``protocol``: ``python -m domgen.run protocol`` (yoon2019's error profile), verbatim.

Usage: ``tools/readme_outputs.sh [--quick] [--write]``; exit status 1 when a quote differs. The package
never imports this file; ``tests/test_readme.py`` uses its block reader.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"<!-- readme-output: (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /readme-output -->", re.S)


def blocks(text: str) -> dict[str, str]:
    """NAME -> the quoted output (inside its ``` fence when it has one)."""
    out = {}
    for m in BLOCK.finditer(text):
        body = m.group("body")
        fenced = re.search(r"```[^\n]*\n(.*?)```", body, re.S)
        out[m.group("name")] = (fenced.group(1) if fenced else body).strip("\n")
    return out


def replace_block(text: str, name: str, new: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group("name") != name:
            return m.group(0)
        body = m.group("body")
        fenced = re.search(r"(```[^\n]*\n)(.*?)(```)", body, re.S)
        inner = fenced.group(1) + new + "\n" + fenced.group(3) if fenced else new
        return m.group(0).replace(fenced.group(0) if fenced else body.strip("\n"), inner)

    return BLOCK.sub(sub, text)


def domgen(*args: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "domgen.run", *args], cwd=REPO, capture_output=True, text=True,
                          env=(env or os.environ) | {"TQDM_DISABLE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"`python -m domgen.run {' '.join(args)}` failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def summary_output(cache: Path | None = None) -> str:
    """What `summary` prints on the synthetic default, without its 'wrote ...' line, the cache shown as ~."""
    env = dict(os.environ)
    env.pop("DOMGEN_DATA", None)
    if cache is not None:
        env["DOMGEN_CACHE"] = str(cache)
    with tempfile.TemporaryDirectory() as out:
        text = domgen("summary", "--out", out, env=env)
    root = str(cache) if cache is not None else os.environ.get("DOMGEN_CACHE") or str(Path.home() / ".cache" / "domgen")
    lines = [l.replace(root, "~/.cache/domgen") for l in text.splitlines() if not l.startswith("wrote ")]
    return "\n".join(lines)


def current(quick: bool) -> dict[str, str]:
    outputs = {"list": domgen("list").rstrip("\n"), "algorithms": domgen("list", "algorithms").rstrip("\n"),
               "regimes": domgen("list", "regimes").rstrip("\n"),
               "summary": summary_output(), "protocol": domgen("protocol").rstrip("\n")}
    if not quick:
        with tempfile.TemporaryDirectory() as runs:
            job = domgen("loo", "--holdout", "PH2", "--preset", "quick", "--out", runs).splitlines()
            outputs["main-job"] = "\n".join(job)
            outputs["table"] = domgen("table", "--runs", runs).rstrip("\n")
    return outputs


def main_job_key(text: str) -> str:
    """The main job's lines the README must quote exactly: the opening data line and the table."""
    lines = text.splitlines()
    data = [l for l in lines if l.startswith("data:")][:1]
    table = lines[next((i for i, l in enumerate(lines) if l.startswith("exp ")), len(lines)):]
    return "\n".join(data + table)


def compare(name: str, quoted: str, now: str) -> list[str]:
    if name == "main-job":  # the README abbreviates the epoch lines
        quoted, now = main_job_key(quoted), main_job_key(now)
    return list(difflib.unified_diff(quoted.splitlines(), now.splitlines(), f"README {name}", f"now {name}", lineterm=""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="only list and summary (seconds), not the main job")
    ap.add_argument("--write", action="store_true", help="replace the README's quotes with the current outputs")
    args = ap.parse_args()
    text = README.read_text()
    quoted = blocks(text)
    differ = False
    for name, now in current(args.quick).items():
        diff = compare(name, quoted.get(name, ""), now)
        if diff:
            differ = True
            print("\n".join(diff))
            if args.write and name != "main-job":  # the main job's quote is abbreviated by hand
                text = replace_block(text, name, now)
        else:
            print(f"{name}: the README quotes the current output")
    if args.write:
        README.write_text(text)
    return 1 if differ and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
