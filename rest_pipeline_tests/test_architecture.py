"""The architecture's rules, checked on the source: no import cycle anywhere in the package (function-
local imports included), the core never imports the orchestration layer, and each record file name
is spelled in one module only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rest_pipeline"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports, from every import statement (top level or not)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = mod.split(".") if is_package else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in files:  # `from pkg.mod import name` -> pkg.mod
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
    pkg = tmp_path / "rest_pipeline"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from rest_pipeline.sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from rest_pipeline import a\n")
    assert find_cycle(import_graph(pkg)) == ["rest_pipeline.a", "rest_pipeline.sub.b", "rest_pipeline.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    import json\n")
    assert find_cycle(import_graph(pkg)) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 40 and "rest_pipeline.orchestration.keys" in graph
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_core_never_imports_orchestration_and_keys_imports_no_asset_file():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod.startswith("rest_pipeline.core"):
            assert not [d for d in deps if d.startswith("rest_pipeline.orchestration")], mod
    assert not [d for d in graph["rest_pipeline.orchestration.keys"] if d.startswith("rest_pipeline.orchestration")]


# Layers, lowest first: a module may import its own layer's modules and lower layers' only. The spec is a
# pure schema (its checks against the installation live in core/spec_check.py); paths know no store;
# the store knows no reward (rewards score and cache through the store's tables, core/rewards/scoring.py).
LOWER_THAN = {
    "rest_pipeline.spec": ["rest_pipeline.core", "rest_pipeline.orchestration", "rest_pipeline.cli"],
    "rest_pipeline.core.paths": ["rest_pipeline.core.store", "rest_pipeline.core.rewards"],
    "rest_pipeline.core.store": ["rest_pipeline.core.rewards", "rest_pipeline.core.grow", "rest_pipeline.core.improve"],
}


def arrows_against_layers(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each import of a higher layer from a lower one (LOWER_THAN)."""
    bad = []
    for low, highs in LOWER_THAN.items():
        for mod, deps in graph.items():
            if mod == low or mod.startswith(low + "."):
                bad += [f"{mod} -> {d}" for d in sorted(deps) if any(d == h or d.startswith(h + ".") for h in highs)]
    return bad


def test_layer_rules_catch_a_back_arrow(tmp_path):
    pkg = tmp_path / "rest_pipeline"
    (pkg / "core" / "store").mkdir(parents=True)
    (pkg / "core" / "rewards").mkdir()
    for d in (pkg, pkg / "core", pkg / "core" / "store", pkg / "core" / "rewards"):
        (d / "__init__.py").write_text("")
    (pkg / "spec.py").write_text("def f():\n    from rest_pipeline.core.rewards import base\n")
    (pkg / "core" / "rewards" / "base.py").write_text("from rest_pipeline.core.store import tables\n")
    (pkg / "core" / "store" / "tables.py").write_text("import json\n")
    assert "rest_pipeline.spec -> rest_pipeline.core.rewards.base" in arrows_against_layers(import_graph(pkg))
    assert not [a for a in arrows_against_layers(import_graph(pkg)) if a.startswith("rest_pipeline.core")]
    (pkg / "core" / "store" / "tables.py").write_text("from rest_pipeline.core.rewards.base import x\n")
    assert "rest_pipeline.core.store.tables -> rest_pipeline.core.rewards.base" in arrows_against_layers(
        import_graph(pkg)
    )


def test_no_back_arrow_between_layers():
    assert arrows_against_layers(import_graph()) == []


def test_each_record_file_is_named_in_one_module():
    names = ["summary.json", "step.json", "slice.json", "curves.json", "scores.json", "report.json", "corpus.json",
             "valid_rewards.json"]  # fmt: skip
    for name in names:
        where = [p for p in PACKAGE.rglob("*.py") if re.search(re.escape(f'"{name}"'), p.read_text())]
        assert [p.relative_to(PACKAGE).as_posix() for p in where] == ["core/store/layout.py"], name


def test_every_torch_load_refuses_pickled_code() -> None:
    """Whoever can write the store must not run code in the next training: each torch.load in the package
    says weights_only=True (tensors and plain data only)."""
    loose = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords)
                if not safe:
                    loose.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not loose, f"torch.load without weights_only=True: {loose}"


def test_no_file_of_the_store_is_over_about_300_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "core" / "store").glob("*.py")}
    assert max(sizes.values()) <= 320, sizes


def test_sql_against_the_store_views_lives_in_the_store():
    """Named queries (core/store/queries.py) are the code's only SQL over the candidate views; people
    write theirs through `rest query` (cli.py passes it on, it writes none)."""
    view = re.compile(r"\b(FROM|JOIN)\s+(candidates|scores|scored|slices|lineage)\b", re.IGNORECASE)
    outside = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if view.search(p.read_text()) and not p.relative_to(PACKAGE).as_posix().startswith("core/store/")
    ]
    assert outside == []
