"""The import rules of the package layout (README "Architecture"), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def imports_of(path: Path) -> set[str]:
    """Every ``auditgate`` module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("auditgate")}


def graph() -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: imports_of(path) & modules.keys() for name, path in modules.items()}


def importers(prefixes: tuple[str, ...], imported: tuple[str, ...]) -> list[tuple[str, str]]:
    """(module, import) pairs where a module under ``prefixes`` imports one of ``imported``."""
    return sorted(
        (module, name)
        for module, names in graph().items()
        if module.startswith(prefixes)
        for name in names
        if name.startswith(imported)
    )


def test_the_request_path_does_not_know_which_bus_it_holds() -> None:
    """Durability is a bus capability: no transport or the pipeline imports audit.spool."""
    request_path = (
        "auditgate.server",
        "auditgate.pipeline",
        "auditgate.asgi",
        "auditgate.middleware",
        "auditgate.grpc",
        "auditgate.audit.capture",
    )
    assert importers(request_path, ("auditgate.audit.spool",)) == []


def test_transports_do_not_import_each_other() -> None:
    """gRPC is handed what it uses; it never reaches into the HTTP server (nor back)."""
    assert importers(("auditgate.grpc",), ("auditgate.server", "auditgate.middleware")) == []
    assert importers(("auditgate.server",), ("auditgate.grpc.service",)) == []


def test_the_store_readers_and_queries_form_no_cycle() -> None:
    """The readers import the shared queries; only ``store.url`` knows every reader."""
    assert importers(("auditgate.store.queries",), ("auditgate.store.sqlite_reader",)) == []
    assert importers(("auditgate.store.queries",), ("auditgate.store.postgres_reader",)) == []


def test_the_audit_core_imports_no_transport() -> None:
    """``audit`` is the core: it imports nothing from the transports or the engines."""
    transports = ("auditgate.server", "auditgate.grpc", "auditgate.middleware", "auditgate.engines")
    assert importers(("auditgate.audit",), transports) == []


def test_the_cli_only_parses_arguments_nothing_depends_on_it() -> None:
    """Services (the consumer, the importer, the trail readers) live outside ``cli/``; no
    module outside it imports it, so each can be used without the command line."""
    outside = [
        (module, name)
        for module, name in importers(("auditgate",), ("auditgate.cli",))
        if not module.startswith(("auditgate.cli", "auditgate.__main__"))
    ]
    assert outside == []
