"""Architecture rules, checked on the source: the library has no import circle and never imports the application
(``trainers/``, ``datasets/`` at the root, ``train.py``); only the engine talks to Dassl; a trainer composes shared
parts and never defines its own text encoder, CLIP loader or Sinkhorn."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

from conftest import ROOT

LIB = ROOT / "promptot"


def _modules() -> Dict[str, Path]:
    out = {}
    for f in LIB.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(f: Path, module: str, is_pkg: bool) -> Set[str]:
    """Every module named by an import statement anywhere in the file (function-level imports included)."""
    pkg = module if is_pkg else module.rsplit(".", 1)[0]
    names: Set[str] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


def _graph() -> Dict[str, Set[str]]:
    mods = _modules()
    return {m: {t for t in _imports(f, m, f.name == "__init__.py") if t in mods and t != m} for m, f in mods.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_has_no_import_circle():
    assert _cycles(_graph()) == []


def test_library_never_imports_the_application_or_dassl():
    for m, f in _modules().items():
        names = _imports(f, m, f.name == "__init__.py")
        top = {n.split(".")[0] for n in names}
        assert not top & {"trainers", "train", "datasets"}, f"{m} imports the application ({top})"
        if m != "promptot.engine._dassl":
            assert "dassl" not in top, f"{m} imports dassl; only promptot/engine/_dassl.py may"


def test_trainers_compose_shared_parts():
    forbidden_imports = {"open_clip", "clip", "dassl", "ot"}  # CLIP, Dassl and POT come through promptot
    for f in sorted((ROOT / "trainers").glob("*.py")):
        tree = ast.parse(f.read_text())
        names = _imports(f, "trainers." + f.stem, False)
        assert not {n.split(".")[0] for n in names} & forbidden_imports, f"{f.name} imports {names}"
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                assert "TextEncoder" not in node.name and "Sinkhorn" not in node.name, \
                    f"{f.name} defines {node.name}: use promptot.clip.PromptedCLIP / promptot.ot"
            if isinstance(node, ast.FunctionDef):
                assert node.name not in ("load_clip", "sinkhorn", "encode_text", "encode_image"), \
                    f"{f.name} defines {node.name}(): use the shared one"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in ("load", "jit"), f"{f.name} loads weights itself ({ast.unparse(node)})"
