"""The module graph: no import circles (type-only imports aside), and drivers imported only when
their backend is chosen."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "gateway"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module, package: str) -> set[str]:
    """Module-level imports of gateway modules, not those under ``if TYPE_CHECKING``."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - sub.level + 1]
                                    + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in sub.names)
    return {f for f in found if f == "gateway" or f.startswith("gateway.")}


def graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges[name] = {m for m in _runtime_imports(ast.parse(path.read_text()), package)
                       if m in modules and m != name}
    return edges


def test_no_import_circles() -> None:
    edges = graph()
    # a package's __init__ importing its own submodules is not a circle of design
    for name in edges:
        edges[name] = {m for m in edges[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_admin_app_does_not_know_the_composition_root() -> None:
    edges = graph()
    for name, deps in edges.items():
        if name.startswith("gateway.admin"):
            assert not deps & {"gateway.app", "gateway.services", "gateway.server"}, name


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted("
                          "m for m in sys.modules if m in ('redis', 'asyncpg', 'aiosqlite'))))"],
                         capture_output=True, text=True, check=True, cwd=ROOT.parent)
    return set(out.stdout.split())


def test_drivers_are_imported_only_when_chosen(tmp_path: Path) -> None:
    assert _loaded_after("import gateway.services, gateway.app, gateway.cli") == set()
    opened = f"""
import asyncio
from gateway.config import Settings
from gateway.services import Services
async def main():
    async with Services.opened(Settings(store='sqlite:///{tmp_path}/d.db'), background=True):
        pass
asyncio.run(main())"""
    assert _loaded_after(opened) == {"aiosqlite"}
    built = """
from gateway.cache import make_shared
from gateway.ratelimit import make_limiter
from gateway.redis_client import RedisClient
c = RedisClient('redis://127.0.0.1:1/0')
make_shared('redis://x', lambda url: c), make_limiter('redis://x', lambda url: c)"""
    assert _loaded_after(built) == {"redis"}
