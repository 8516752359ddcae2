"""Optional dependencies: which pyproject extra brings each, and the one line a missing one raises.

The core install (`pip install -e .`) trains, evaluates, plots and diagnoses classic runs. Everything else is
an extra; a feature that needs one imports it through `need`, so a missing package is one line naming the
extra, never a traceback. tests/test_extras.py checks every entry against pyproject.toml.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from proximo.errors import ProximoError

# import name -> (distribution as pyproject names it, extra that brings it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "transformers": ("transformers", "llm"),
    "peft": ("peft", "llm"),
    "datasets": ("datasets", "llm"),
    "ale_py": ("ale-py", "atari"),
    "minatar": ("minatar", "atari"),
    "cv2": ("opencv-python-headless", "atari"),
    "imageio": ("imageio", "video"),
    "pygame": ("pygame", "video"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "wandb": ("wandb", "wandb"),
    "ray": ("ray", "ray"),
    "optuna": ("optuna", "ray"),
    "yaml": ("pyyaml", "ray"),
}


def install_hint(module: str) -> str:
    """"<package>, which is not installed; install the X extra: pip install -e '.[X]'" for an optional module."""
    distribution, extra = OPTIONAL[module.split(".")[0]]
    return f"{distribution}, which is not installed; install the {extra} extra: pip install -e '.[{extra}]'"


def need(module: str, feature: str) -> ModuleType:
    """Import an optional module, or raise ProximoError: '<feature> needs <package>, ...: pip install ...'."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ProximoError(f"{feature} needs {install_hint(module)}") from None
