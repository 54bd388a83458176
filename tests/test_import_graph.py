"""No import circle inside tinysiglip: the package layout is a one-way graph of dependencies.

The rule: every import statement in a module counts, wherever it stands: at module level, inside a
function (a lazy import) and under ``if TYPE_CHECKING:``. Lazy imports are welcome for what they are
for (deferring torch, Ray or transformers until needed), but a lazy import that points back at its
importer is still a circle: the two modules cannot be read, tested or moved apart. Both circles this
test was written against (sweep.driver <-> searcher/scheduler, students.model <-> registry) closed
through lazy imports, so a module-level-only rule would not have seen them.

An import names a module of the package: ``from a.b import c`` is an edge to ``a.b.c`` when that is a
module, else to ``a.b``; relative imports resolve against the importer's package. Importing a
submodule is not counted as an edge to its parent package's ``__init__`` (Python runs it first, but a
package's ``__init__`` re-exporting its own modules is how packages work, not a circle).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import tinysiglip

PACKAGE_ROOT = Path(tinysiglip.__file__).resolve().parent


def package_modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """``{dotted module name: (file, is a package __init__)}`` for every .py file under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def imported_modules(name: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""

    def known(dotted: str) -> str | None:  # the longest prefix that is one of the package's modules
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    here = name if is_package else name.rpartition(".")[0]
    targets: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules else known(source))
    return {t for t in targets if t is not None and t != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = package_modules(root)
    return {name: imported_modules(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}


def import_cycle(root: Path) -> list[str] | None:
    """One import circle among the package's modules (``[a, b, ..., a]``), or None when there is none."""
    try:
        graphlib.TopologicalSorter(import_graph(root)).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return None


def test_no_import_circle_inside_tinysiglip():
    cycle = import_cycle(PACKAGE_ROOT)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_graph_sees_lazy_relative_and_type_checking_imports(tmp_path):
    """The checker itself: a circle closed by a lazy import, a relative one or a TYPE_CHECKING one is found."""
    pkg = tmp_path / "demo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from demo.a import A\n")
    (pkg / "a.py").write_text("from demo import b\nA = 1\n")
    (pkg / "b.py").write_text("def f():\n    from demo.sub.c import C\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import A\n"
    )
    assert import_graph(pkg)["demo.b"] == {"demo.sub.c"}
    assert import_graph(pkg)["demo.sub.c"] == {"demo.a"}
    cycle = import_cycle(pkg)
    assert cycle is not None and set(cycle) == {"demo.a", "demo.b", "demo.sub.c"}
    (pkg / "sub" / "c.py").write_text("C = 1\n")
    assert import_cycle(pkg) is None
