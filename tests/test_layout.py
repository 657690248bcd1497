"""The package layout: no import circles, and each wing imports only what lies below it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bnexp"

# What each wing may import from bnexp (module names or package prefixes ending in "."): config,
# data and the report never reach the run side (sweep, train, executors, ...), and the report reads
# runs through store alone.
ALLOWED = {
    "bnexp.config.": ("bnexp.errors", "bnexp.metrics", "bnexp.norms", "bnexp.optimizers", "bnexp.config."),
    "bnexp.data.": ("bnexp.errors", "bnexp.config.", "bnexp.data."),
    "bnexp.report.": ("bnexp.errors", "bnexp.metrics", "bnexp.norms", "bnexp.store", "bnexp.config.keypaths",
                      "bnexp.report."),
    "bnexp.store": ("bnexp.errors", "bnexp.metrics", "bnexp.norms", "bnexp.config.messages"),
    "bnexp.norms": ("bnexp.layers",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The bnexp modules `path` imports when it runs, lazy imports included; those under
    `if TYPE_CHECKING:` (annotations only) are not imports at run time."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
               for node in ast.walk(block)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnexp"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("bnexp"))
    return {name for name in found if name in modules and name != "bnexp"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: runtime_imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_no_module_imports_itself_back_through_others(graph):
    def reaches(start: str, goal: str, seen: set[str]) -> list[str] | None:
        for nxt in sorted(graph[start]):
            if nxt == goal:
                return [start, goal]
            if nxt not in seen:
                seen.add(nxt)
                path = reaches(nxt, goal, seen)
                if path:
                    return [start, *path]
        return None

    circles = [" -> ".join(path) for name in sorted(graph) if (path := reaches(name, name, set()))]
    assert circles == []


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_a_wing_imports_only_what_lies_below_it(graph, wing):
    def allowed(target: str) -> bool:
        return any(target == rule or (rule.endswith(".") and target.startswith(rule)) for rule in ALLOWED[wing])

    members = [name for name in graph if name == wing or (wing.endswith(".") and name.startswith(wing))]
    assert members
    upward = {name: sorted(t for t in graph[name] if not allowed(t)) for name in members}
    assert {name: targets for name, targets in upward.items() if targets} == {}
