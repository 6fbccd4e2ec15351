"""What learns. Each algorithm is one module defining one `Algorithm` subclass, registered by name.

Every module in this package (outside `core`) is imported on first use, so a new algorithm is one
file here plus one YAML in configs/algo/.
"""

from __future__ import annotations

import importlib
import pkgutil

from algorithms.core.algorithm import Algorithm, RewardConfig, SettingsError, Spec

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a class attribute `name`.")
    ALGORITHMS[cls.name] = cls
    return cls


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "core":
            importlib.import_module(f"{__name__}.{module.name}")


def get(name: str) -> type[Algorithm]:
    _discover()
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm '{name}'; available: {', '.join(sorted(ALGORITHMS))}.")
    return ALGORITHMS[name]


def available() -> list[str]:
    _discover()
    return sorted(ALGORITHMS)


__all__ = ["ALGORITHMS", "Algorithm", "RewardConfig", "SettingsError", "Spec", "available", "get", "register"]
