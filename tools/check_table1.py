"""Compare a data root's image counts with the counts the dataset cards quote (the paper's Table 1).

    python tools/check_table1.py [--data-root ROOT] [--summary counts.json] [--cards datasets/]

Counts come from ``python -m domgen.run summary --json`` on ROOT (or the synthetic default, or a saved
``--summary`` file); expected counts from each card in ``datasets/``: the first Markdown table whose
header is the seven classes and ``total``, else the ``**Table 1.**`` paragraph ("3551 images ...
nv 2241, mel 826, ..."; classes it does not name count as 0 when it names all seven or says "no other
class", else are not checked). Prints one line per source and exits 1 when any count differs. A person
runs this; the package never imports it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("nv", "mel", "bcc", "df", "bkl", "vasc", "akiec")
_CODE = re.compile(r"domain code `(\w+)`")
_HEADER = re.compile(r"^\|\s*" + r"\s*\|\s*".join(CLASSES) + r"\s*\|\s*total\s*\|\s*$", re.M)
_PARAGRAPH = re.compile(r"\*\*Table 1\.\*\*(.*?)(?:\n\s*\n|$)", re.S)


@dataclass
class Expected:
    """What a card quotes: ``counts`` for the classes it pins down, and the total when it gives one."""

    code: str
    card: str
    counts: dict[str, int] = field(default_factory=dict)
    total: int | None = None


def parse_card(text: str, name: str = "card") -> Expected | None:
    """The counts a card quotes, or None for a card with no domain code or no Table 1 counts."""
    code = _CODE.search(text)
    if code is None:
        return None
    exp = Expected(code.group(1), name)
    table = _HEADER.search(text)
    if table is not None:
        row = text[table.end():].strip().splitlines()[1]  # the line after the |---:| separator
        cells = [int(c) for c in row.strip().strip("|").split("|")]
        exp.counts, exp.total = dict(zip(CLASSES, cells[:7])), cells[7]
        return exp
    para = _PARAGRAPH.search(text)
    if para is None:
        return None
    words = " ".join(para.group(1).split())
    total = re.search(r"(\d[\d,]*) images", words)
    exp.total = int(total.group(1).replace(",", "")) if total else None
    exp.counts = {c: int(n) for c, n in re.findall(r"\b(" + "|".join(CLASSES) + r") (\d+)\b", words)}
    if exp.counts and (len(exp.counts) == len(CLASSES) or "no other class" in words):
        exp.counts = {c: exp.counts.get(c, 0) for c in CLASSES}
    return exp if exp.counts or exp.total is not None else None


def read_cards(folder: Path) -> dict[str, Expected]:
    """Domain code -> what its card quotes, for every card in ``folder`` that quotes counts."""
    cards = (parse_card(p.read_text(), p.name) for p in sorted(Path(folder).glob("*.md")))
    return {e.code: e for e in cards if e is not None}


def compare(counts: dict[str, dict[str, int]], expected: dict[str, Expected]) -> tuple[list[str], int]:
    """(one line per source, number of sources whose counts differ). ``counts``: summary --json."""
    lines, bad = [], 0
    for code, exp in expected.items():
        if code not in counts:
            lines.append(f"{code}: not in the data (skipped); {exp.card} quotes {exp.total} images")
            continue
        got = counts[code]
        diffs = [f"{c} {got.get(c, 0)} (card {n})" for c, n in exp.counts.items() if got.get(c, 0) != n]
        total = sum(got.values())
        if exp.total is not None and total != exp.total:
            diffs.append(f"total {total} (card {exp.total})")
        bad += bool(diffs)
        lines.append(f"{code}: " + ("differs: " + ", ".join(diffs) if diffs else f"matches {exp.card} ({total} images)"))
    lines += [f"{code}: no card quotes its counts" for code in counts if code not in expected]
    return lines, bad


def summary_counts(data_root: str | None) -> dict[str, dict[str, int]]:
    """``python -m domgen.run summary --json`` on ``data_root`` (None: the default data)."""
    cmd = [sys.executable, "-m", "domgen.run", "summary", "--json"] + (["--data-root", data_root] if data_root else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None, help="data root to count (default: $DOMGEN_DATA, else synthetic)")
    p.add_argument("--summary", default=None, help="a saved `summary --json` output instead of counting")
    p.add_argument("--cards", default=str(REPO / "datasets"), help="folder of dataset cards")
    args = p.parse_args(argv)
    counts = json.loads(Path(args.summary).read_text()) if args.summary else summary_counts(args.data_root)
    lines, bad = compare(counts, read_cards(Path(args.cards)))
    print("\n".join(lines))
    print(f"{bad} source(s) differ from their card" if bad else "every source present matches its card")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
