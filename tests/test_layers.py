"""The package's imports run one way, down the layers, and never in a circle; tools/ is never imported.

Walks every module's imports with ``ast`` (top-level, inside functions and under ``TYPE_CHECKING``
alike: a lazy import is still a dependency), so the test needs no import of the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "domgen"

# Lowest first. A module may import its own layer or a lower one. A package not listed fails the test:
# place it here, in the layer its imports put it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("domgen", "domgen.atomic", "domgen.errors", "domgen.registry", "domgen.threads", "domgen.progress",
                    "domgen.lock", "domgen.seeds", "domgen.protocol", "domgen.config", "domgen.config_check",
                    "domgen.studies")),
    ("data, models, losses", ("domgen.data", "domgen.models", "domgen.losses", "domgen.analysis")),
    ("algorithms", ("domgen.algorithms", "domgen.regimes")),
    ("engine", ("domgen.engine", "domgen.prune")),
    ("drivers", ("domgen.runs", "domgen.export", "domgen.bench")),
    ("sweep, results", ("domgen.sweep", "domgen.results")),
    ("command line", ("domgen.cli_common", "domgen.cli_ablate", "domgen.cli_bench", "domgen.cli_results",
                      "domgen.cli_sweep", "domgen.run")),
]
# Upward imports allowed, each inside a function (never at import time), with the reason.
ALLOWED_UPWARD = {
    ("domgen.config_check", "domgen.algorithms"): "validate() and --set check algorithm.* against the algorithm's declared hyperparameters",
    ("domgen.config_check", "domgen.losses"): "validate() asks the loss registry whether loss.name exists",
    ("domgen.config", "domgen.algorithms"): "algorithm.name switches the algorithm section to that algorithm's declared hyperparameters",
    ("domgen.config_check", "domgen.regimes"): "validate() asks the regime to check its hyperparameters and the run",
    ("domgen.config", "domgen.regimes"): "regime.name switches the regime section to that regime's declared hyperparameters",
    ("domgen.config_check", "domgen.data.labels"): "normalise() maps --holdout SONIC and SON to one code through the source registry",
    ("domgen.config_check", "domgen.data.label_space"): "validate() checks data.label_space against the named label spaces",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, modules: set[str]) -> dict[str, bool]:
    """Modules of the package that ``name`` imports -> whether the import runs at import time (top level)."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, (ast.If, ast.Try))
                                        and not _type_checking(s) for n in ast.walk(s)}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .x import y
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # "from domgen.data import labels" depends on the module domgen.data.labels
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            if t.split(".")[0] == "domgen" or t.split(".")[0] == "tools":
                found[t] = found.get(t, False) or id(node) in top
    return found


def _type_checking(node: ast.stmt) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations only, never run."""
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def graph() -> dict[str, dict[str, bool]]:
    mods = all_modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            hit = module == p if p == "domgen" else (module == p or module.startswith(p + "."))
            if hit and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer: add its package to LAYERS in {__file__}"
    return rank


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a module importing itself)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_lazy_and_from_imports():
    g = graph()
    assert g["domgen.cli_common"]["domgen.engine.trainer"] is False  # inside cli_hooks(): lazy
    assert g["domgen.cli_common"]["domgen.errors"] is True
    assert "domgen.lock" in g["domgen.sweep.status"]  # "from domgen import lock" names the module
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_run_down_the_layers():
    g = graph()
    upward = []
    for src, targets in g.items():
        for dst, at_import in targets.items():
            if dst.startswith("tools"):
                upward.append(f"{src} imports {dst}: tools/ is for people, never for the package")
            elif layer(dst) > layer(src):
                allowed = (src, dst) in ALLOWED_UPWARD and not at_import
                if not allowed:
                    upward.append(f"{src} ({LAYERS[layer(src)][0]}) imports {dst} ({LAYERS[layer(dst)][0]})")
    assert upward == []
    stale = [edge for edge in ALLOWED_UPWARD if edge[1] not in g.get(edge[0], {})]
    assert stale == [], "no longer imported: remove from ALLOWED_UPWARD"


def test_no_import_circles():
    # A package's __init__ gathering its own submodules (a registry filled on import) is not a circle.
    # The allowed upward imports are lazy and listed above; they are left out here for the same reason.
    edges = {src: {d for d in targets if not d.startswith(src + ".") and (src, d) not in ALLOWED_UPWARD}
             for src, targets in graph().items()}
    assert cycles(edges) == []
