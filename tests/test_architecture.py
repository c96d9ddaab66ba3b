"""The package's layers: the training loop and the evaluate/predict front ends are its top,
and no library module imports them (docs/architecture.md)."""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "stlight_jax")
FRONT_ENDS = {"train", "evaluation", "predict", "api", "export", "reproduce"}
# Who may import a front end: evaluate.py's library dispatches predict mode to `predict`; the
# Python API forecasts through `predict` (and is `stlight_jax.load`), the exports load through
# the API; the command lines (`commands`) are the entry points.
ALLOWED = {
    ("evaluation", "predict"),
    ("api", "predict"),
    ("__init__", "api"),  # `stlight_jax.load` is the API's public name (imported when called)
    ("export", "api"),
    ("commands.train", "train"),
    ("commands.evaluate", "evaluation"),
    ("reproduce", "train"),  # a paper row is a training run plus its row.json
    # `python -m stlight_jax.pretrained ship` packages a finished run and re-scores its first
    # test sequences through evaluate.py's own path, so the shipped record is what it measures.
    ("pretrained", "evaluation"),
}


def _package_imports(path: str) -> set[str]:
    """stlight_jax modules `path` imports, as names relative to the package."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module == "stlight_jax":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stlight_jax."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("stlight_jax.")}
    return found


def test_nothing_in_the_package_imports_the_front_ends():
    importers = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            module = os.path.relpath(os.path.join(root, name), PACKAGE)[:-3].replace(os.sep, ".")
            for imported in _package_imports(os.path.join(root, name)) & FRONT_ENDS:
                if (module, imported) not in ALLOWED:
                    importers.append(f"{module} imports {imported}")
    assert not importers
    assert _package_imports(os.path.join(PACKAGE, "evaluation.py")) >= {"predict", "steps"}
