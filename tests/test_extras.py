"""Extras stay optional: every optional package is imported lazily, and a feature whose package is missing says
which extra brings it in one line (proximo/extras.py)."""
import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from proximo.errors import ProximoError
from proximo.extras import OPTIONAL, install_hint

ROOT = Path(__file__).resolve().parent.parent


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_every_optional_package_is_in_the_extra_that_names_it():
    extras = _extras()
    for module, (distribution, extra) in OPTIONAL.items():
        names = [re.split(r"[<>=!\[ ;]", req)[0].lower() for req in extras[extra]]
        assert distribution.lower() in names, f"{module}: {distribution} is not in the {extra} extra {names}"


def test_optional_packages_are_imported_only_inside_functions():
    """The core install imports none of them: `proximo train` and `proximo doctor` run without any extra."""
    top_level = []
    for path in sorted((ROOT / "proximo").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; imports inside functions are lazy
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            top_level += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in OPTIONAL]
    assert top_level == []


def _dummy_policy():
    from proximo.api import PPO
    return PPO("CartPole-v1", n_steps=8, batch_size=8, seed=1).policy


def _run_tune_without_optuna(tmp_path):
    pytest.importorskip("ray", reason="needs ray present to reach the optuna check: pip install -e '.[ray]'")
    from proximo.sweep.tune import run_tune
    run_tune("CartPole-v1", None, {}, [], 1, tmp_path, None)


def _minatar(tmp_path, monkeypatch):
    import gymnasium
    from proximo.envs.atari import register_pixel_family
    monkeypatch.setattr(gymnasium, "registry", {})  # as if MinAtar's ids were not registered yet
    register_pixel_family("MinAtar/Breakout-v1")


def _cv2(tmp_path, monkeypatch):
    pytest.importorskip("ale_py", reason="needs ale-py present to reach the OpenCV check: pip install -e '.[atari]'")
    from proximo.envs.atari import register_pixel_family
    register_pixel_family("ALE/Pong-v5")


def _yaml_file(tmp_path):
    from proximo.config import read_mapping
    path = tmp_path / "preset.yaml"
    path.write_text("learning_rate: 0.001\n")
    read_mapping(path, "preset file")


def _dataset(tmp_path):
    from proximo.llm.data import _read_rows
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "1+1="}\n')
    _read_rows(path)


# module -> what a user does that needs it (each raises the one-line error when the module is missing)
TRIGGERS = {
    "transformers": lambda tmp, mp: __import__("proximo.llm.models", fromlist=["x"]).load_model("tiny"),
    "peft": lambda tmp, mp: __import__("proximo.llm.lora", fromlist=["x"]).LoRA(torch.nn.Linear(2, 2), 8, 16.0),
    "datasets": lambda tmp, mp: _dataset(tmp),
    "ale_py": lambda tmp, mp: __import__("proximo.envs.atari", fromlist=["x"]).register_pixel_family("ALE/Pong-v5"),
    "minatar": _minatar,
    "cv2": _cv2,
    "imageio": lambda tmp, mp: __import__("proximo.video", fromlist=["x"]).record_episodes(None, "CartPole-v1", tmp, 1),
    "pygame": lambda tmp, mp: __import__("proximo.video", fromlist=["x"]).record_episodes(
        _dummy_policy(), "CartPole-v1", tmp, 1),
    "onnx": lambda tmp, mp: __import__("proximo.export", fromlist=["x"])._export_onnx(None, tmp / "p.onnx", {}),
    "wandb": lambda tmp, mp: __import__("proximo.tracking", fromlist=["x"]).WandbTracker(tmp, {}),
    "ray": lambda tmp, mp: __import__("proximo.sweep.cluster", fromlist=["x"]).import_ray(),
    "optuna": lambda tmp, mp: _run_tune_without_optuna(tmp),
    "yaml": lambda tmp, mp: _yaml_file(tmp),
}


def test_every_optional_module_has_a_trigger():
    assert set(TRIGGERS) == set(OPTIONAL) - {"onnxruntime"}  # onnxruntime runs exported files; proximo never imports it


@pytest.mark.parametrize("module", sorted(TRIGGERS))
def test_a_missing_extra_is_one_line_naming_it(module, tmp_path, monkeypatch):
    if module == "pygame":
        pytest.importorskip("imageio", reason="needs imageio present to reach rendering: pip install -e '.[video]'")
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    for name in [m for m in sys.modules if m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ProximoError) as info:
        TRIGGERS[module](tmp_path, monkeypatch)
    text = str(info.value)
    extra = OPTIONAL[module][1]
    assert "\n" not in text and install_hint(module) in text and f"pip install -e '.[{extra}]'" in text, text
