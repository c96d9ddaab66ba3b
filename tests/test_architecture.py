"""The package's layers (docs/architecture.md): no library module imports the command lines in
`cli/` or the front ends above it, no module outgrows 400 lines, and the config schema is
declared once."""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "stlight_jax")
MAX_LINES = 400
# The front ends: the training loop, evaluate.py's library, forecasting, the Python API, the
# exports and the paper-row runner. No library module below them imports one.
FRONT_ENDS = {
    "training.loop",
    "evaluation.runner",
    "evaluation.predict",
    "api",
    "export",
    "reproduce",
}
# Who may import a front end besides `cli/`: evaluate.py's library dispatches predict mode to
# `predict`; the Python API forecasts through `predict` (and is `stlight_jax.load`); the exports
# load through the API; a paper row is a training run plus its row.json; `pretrained ship`
# re-scores a run's first test sequences through evaluate.py's own path.
ALLOWED = {
    ("evaluation.runner", "evaluation.predict"),
    ("api", "evaluation.predict"),
    ("__init__", "api"),
    ("export", "api"),
    ("reproduce", "training.loop"),
    ("pretrained", "evaluation.runner"),
}


def _modules():
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "configs" and not d.startswith("__")]
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, "."), path


def _main_guard_lines(tree: ast.Module) -> set[int]:
    """Lines inside `if __name__ == "__main__":` blocks (a `python -m` shim's call into cli/)."""
    lines = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            lines |= set(range(node.lineno, node.end_lineno + 1))
    return lines


def _package_imports(path: str, skip_main_guard: bool = False) -> set[str]:
    """The stlight_jax modules `path` imports, dotted relative to the package (a name imported
    from a package counts as `package.name`)."""
    tree = ast.parse(open(path).read())
    skip = _main_guard_lines(tree) if skip_main_guard else set()
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stlight_jax"):
            base = node.module[len("stlight_jax.") :] if "." in node.module else ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if base else alias.name)
                if base:
                    found.add(base)
        elif isinstance(node, ast.Import):
            found |= {
                a.name[len("stlight_jax.") :]
                for a in node.names
                if a.name.startswith("stlight_jax.")
            }
    return found


def test_nothing_in_the_library_imports_the_command_lines():
    importers = []
    for module, path in _modules():
        if module.startswith("cli."):
            continue
        imported = _package_imports(path, skip_main_guard=True)
        if any(name == "cli" or name.startswith("cli.") for name in imported):
            importers.append(module)
    assert not importers, f"library modules importing stlight_jax.cli: {importers}"


def test_nothing_in_the_library_imports_the_front_ends():
    importers = []
    for module, path in _modules():
        if module.startswith("cli."):
            continue
        for imported in _package_imports(path, skip_main_guard=True) & FRONT_ENDS:
            if (module, imported) not in ALLOWED:
                importers.append(f"{module} imports {imported}")
    assert not importers


def test_no_module_over_400_lines():
    long = {}
    for module, path in _modules():
        with open(path) as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[module] = n
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_the_checker_sees_imports_and_main_guards():
    """The rules above are only as good as `_package_imports`: check it on a known file."""
    shim = os.path.join(PACKAGE, "convert.py")
    assert "cli.convert" in _package_imports(shim)
    assert not _package_imports(shim, skip_main_guard=True)
    assert {"evaluation.predict", "evaluation"} <= _package_imports(
        os.path.join(PACKAGE, "evaluation", "runner.py")
    )


def test_the_config_schema_is_declared_once():
    """config/schema.py is the only module that spells out a list of allowed choices or a
    field's default table; everything else reads them from there (tests/test_config_schema.py
    checks that defaults, validation and ModelConfig are derived from it)."""
    from stlight_jax.config import schema

    choices = {
        value
        for name, value in vars(schema).items()
        if name.isupper() and isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    }
    assert {schema.CONV_IMPLS, schema.INITS, schema.DECODERS} <= choices
    copies = []
    for module, path in _modules():
        if module == "config.schema":
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Tuple) and node.elts:
                try:
                    value = ast.literal_eval(node)
                except ValueError:
                    continue
                if all(isinstance(v, str) for v in value) and value in choices:
                    copies.append(f"{module}:{node.lineno} {value}")
    assert not copies, f"choices written outside config/schema.py: {copies}"
