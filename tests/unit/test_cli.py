"""ztplan.cli stays thin (issue 10, DESIGN §1): options -> `ztplan.run` -> `ztplan.render`
-> exit code. Read from its source with `ast`, so a command that grows into the engine
fails here, not in review. (The behaviour is proven in tests/e2e/test_conventions.py.)"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ztplan.cli

MAX_MODULES = 5
"""ztplan modules cli.py may import at run time: the engine, the views, the errors, the
sandbox and the package itself (for its version)."""
MAX_BODY = 30
"""Lines of a command's `body()`: options to a run, the run to a view, a code."""

SOURCE = Path(ztplan.cli.__file__).read_text()
TREE = ast.parse(SOURCE)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under `if TYPE_CHECKING:` (never run)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            found.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    return found


def runtime_ztplan_modules(tree: ast.Module) -> set[str]:
    """The distinct ztplan modules imported anywhere in `tree` (inside functions too),
    except under TYPE_CHECKING; `from ztplan import render` counts as ztplan.render."""
    skip = _type_checking_only(tree)
    modules: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.split(".")[0] == "ztplan")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "ztplan":
                continue
            modules.update(_module_of(node.module, alias.name) for alias in node.names)
    return modules


def _module_of(module: str, name: str) -> str:
    """`render` of `from ztplan import render` is a module; `__version__` is not."""
    package = importlib.util.find_spec(module)
    if package is None or package.submodule_search_locations is None:
        return module
    return f"{module}.{name}" if importlib.util.find_spec(f"{module}.{name}") else module


def command_bodies(tree: ast.Module) -> dict[str, int]:
    """Each `def body()` nested in a function of cli.py -> its length in lines."""
    return {
        outer.name: inner.end_lineno - inner.lineno + 1  # type: ignore[operator]
        for outer in ast.walk(tree)
        if isinstance(outer, ast.FunctionDef)
        for inner in outer.body
        if isinstance(inner, ast.FunctionDef) and inner.name == "body"
    }


def test_cli_imports_at_most_five_ztplan_modules() -> None:
    modules = runtime_ztplan_modules(TREE)
    assert len(modules) <= MAX_MODULES, sorted(modules)


def test_no_command_body_is_longer_than_thirty_lines() -> None:
    bodies = command_bodies(TREE)
    assert {"plan", "apply", "drift", "validate", "import_cmd"} <= set(bodies)  # not vacuous
    long = {name: lines for name, lines in bodies.items() if lines > MAX_BODY}
    assert not long, f"command bodies over {MAX_BODY} lines: {long}"


def test_the_checks_see_what_they_count() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import ztplan.spec\n"
        "from ztplan import render, __version__\n"
        "if TYPE_CHECKING:\n    from ztplan.model import Plan\n"
        "def cmd():\n    def body():\n        from ztplan.run import open_run\n        return 0\n"
    )
    assert runtime_ztplan_modules(tree) == {"ztplan.spec", "ztplan.render", "ztplan", "ztplan.run"}
    assert command_bodies(tree) == {"cmd": 3}
