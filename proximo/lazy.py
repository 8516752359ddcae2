"""Package faces that hand their names on when first asked for (PEP 562): importing one module of a package then
does not import its siblings (the LLM trainers load no classic trainer, envs or gymnasium)."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_face(package: str, homes: dict[str, str],
              namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for a package face: a name of homes (name -> its module) is imported from its module on
    first use; any other name is the package's submodule of that name, as an eager face left them importable.
    What is found is kept in namespace (the face's globals()), so each name is looked up once."""

    def __getattr__(name: str) -> Any:
        if name in homes:
            value = getattr(importlib.import_module(homes[name]), name)
        elif name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        else:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise  # the submodule exists but needs something missing: say that, not "no attribute"
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *homes})

    return __getattr__, __dir__
