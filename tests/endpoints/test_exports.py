"""The endpoint packages' ``__all__`` name exactly what they export."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

from auditgate.endpoints import completions, embeddings


@pytest.mark.parametrize("package", [completions, embeddings], ids=lambda p: p.__name__)
def test_package_exports(package: ModuleType) -> None:
    """Every public name of the package is in ``__all__`` (its submodules aside), and every
    name in ``__all__`` exists."""
    submodules = {m.name for m in pkgutil.iter_modules(package.__path__)}
    for name in submodules:
        importlib.import_module(f"{package.__name__}.{name}")
    public = {n for n in vars(package) if not n.startswith("_")} - submodules
    assert sorted(public) == sorted(package.__all__)
