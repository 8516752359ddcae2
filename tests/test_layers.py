"""The package's layers, read from its own import statements (module-level and inside functions alike):
core/ knows no env and no model; nn/ takes spaces, not envs; the LLM side and the run skeleton need no gym;
nothing below the command line imports it or the package face; and no two modules import each other, however
far round. A circle or an arrow against the layers fails here naming the files and lines."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "proximo"

# Function-level imports allowed to close a circle, each with its reason: (importer, imported) -> why.
# Empty: every function-level import left in proximo is there for start-up cost or an optional extra, and none
# of them closes a circle. Add one only with a reason a reviewer accepts.
CIRCLE_EXEMPT: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    """One import of a proximo module, or of a third-party top-level package, by a proximo module."""

    source: str       # the importing module, e.g. proximo.llm.grpo
    target: str       # the imported module: a proximo module, or a top-level name such as gymnasium
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(module: str, node: ast.AST) -> list[str]:
    """The modules an import statement names: a proximo submodule where `from X import Y` names one, else X."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolve against the importing module's package
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def _imports_of(module: str) -> list[Import]:
    """Every import statement of module, with whether it runs inside a function; `if TYPE_CHECKING:` blocks
    (annotations for type checkers, never run) are left out."""
    found: list[Import] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for rest in child.orelse:
                    walk(ast.Module(body=[rest], type_ignores=[]), in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, child):
                    name = target if target.startswith("proximo") else target.split(".")[0]
                    found.append(Import(module, name, child.lineno, in_function))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(MODULES[module].read_text()), False)
    return found


IMPORTS = {module: _imports_of(module) for module in MODULES}


def _dynamic_imports() -> list[Import]:
    """The imports made by name at run time: the command modules proximo/cli.py loads with importlib, and the
    names a lazy package face (proximo/__init__.py, proximo/nn/__init__.py) hands on, read from their literals."""
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in MODULES \
                    and node.value != module and node.value.startswith("proximo."):
                found.append(Import(module, node.value, node.lineno, True))
    return found


DYNAMIC = _dynamic_imports()


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _proximo_imports(module: str) -> list[Import]:
    return [i for i in IMPORTS[module] if _in(i.target, "proximo")]


def _say(imports: list[Import]) -> str:
    return "; ".join(f"{MODULES[i.source].relative_to(ROOT)}:{i.line} imports {i.target}" for i in imports)


def test_the_reading_sees_what_it_should():
    """The rules below are only as good as the reading: it must see module-level and function-level imports."""
    grpo = {i.target for i in IMPORTS["proximo.llm.grpo"]}
    assert {"proximo.ppo", "torch"} <= grpo
    cli = [i for i in IMPORTS["proximo.cli"] if i.target == "proximo.train"]
    assert cli and all(i.in_function for i in cli)
    assert {(i.source, i.target) for i in DYNAMIC} >= {("proximo.cli", "proximo.llm.cli"),
                                                                   ("proximo", "proximo.api")}


def test_core_imports_only_core_torch_numpy_and_the_standard_library():
    allowed = {"torch", "numpy", "__future__", *sys.stdlib_module_names}
    wrong = [i for m in MODULES if _in(m, "proximo.core") for i in IMPORTS[m]
             if not (_in(i.target, "proximo.core") or i.target in allowed)]
    assert not wrong, _say(wrong)


def test_nn_takes_spaces_not_envs():
    """nn/ builds on core/ and the error types alone: no env, trainer, run, CLI or LLM module."""
    below = ("proximo.core", "proximo.nn", "proximo.errors", "proximo.extras", "proximo.lazy")
    wrong = [i for m in MODULES if _in(m, "proximo.nn") for i in _proximo_imports(m) if not _in(i.target, *below)]
    assert not wrong, _say(wrong)


# The run skeleton both worlds stand on, and the low modules it uses.
SKELETON = ("proximo.callbacks", "proximo.checkpoint", "proximo.rundir", "proximo.state", "proximo.distributed",
            "proximo.metrics", "proximo.tracking", "proximo.diagnostics", "proximo.doctor", "proximo.runtime",
            "proximo.devices", "proximo.fielddoc", "proximo.errors", "proximo.extras", "proximo.version",
            "proximo.lazy")
# proximo/llm/cli.py is left out: it is a command, loaded by proximo/cli.py along with the classic config.
LLM = tuple(m for m in MODULES if _in(m, "proximo.llm") and m != "proximo.llm.cli")
GYM = ("gymnasium", "ale_py", "pettingzoo", "proximo.envs", "proximo.evaluate")


def _loaded_with(module: str) -> dict[str, list[Import]]:
    """Every module importing `module` runs at import time (module-level imports, followed, with the packages
    each lives in), mapped to the chain of imports that reaches it."""
    chains: dict[str, list[Import]] = {module: []}
    todo = [module]
    while todo:
        current = todo.pop()
        parents = [".".join(current.split(".")[:k]) for k in range(1, current.count(".") + 1)]
        steps = [i for i in IMPORTS.get(current, []) if not i.in_function]
        steps += [Import(current, parent, 0, False) for parent in parents]
        for step in steps:
            if step.target not in chains:
                chains[step.target] = chains[current] + [step]
                if step.target in MODULES:
                    todo.append(step.target)
    return chains


@pytest.mark.parametrize("module", LLM + SKELETON)
def test_the_llm_side_and_the_run_skeleton_import_no_gym(module):
    """Neither directly (inside functions too) nor through what they import at import time."""
    direct = [i for i in IMPORTS[module] if _in(i.target, *GYM)]
    assert not direct, _say(direct)
    chains = _loaded_with(module)
    reached = sorted(target for target in chains if _in(target, *GYM))
    assert not reached, f"{module} imports {reached[0]} through: {_say(chains[reached[0]])}"


def test_saved_files_import_no_env_module():
    """saved.py builds policies (so nn/ and its gymnasium spaces), but reads no env."""
    chains = _loaded_with("proximo.saved")
    reached = sorted(t for t in chains if _in(t, "proximo.envs", "proximo.evaluate", "proximo.train"))
    assert not reached, f"proximo.saved imports {reached[0]} through: {_say(chains[reached[0]])}"


def test_nothing_below_the_command_line_imports_it_or_the_package_face():
    """Only `python -m proximo` imports proximo.cli; no module imports the face (proximo/__init__.py)."""
    wrong = [i for m in MODULES if m not in ("proximo.cli", "proximo.__main__") for i in _proximo_imports(m)
             if i.target == "proximo.cli" or (i.target == "proximo" and m != "proximo")]
    assert not wrong, _say(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_even_through_function_level_or_dynamic_imports():
    every = [i for m in MODULES for i in _proximo_imports(m)] + DYNAMIC
    edges: dict[str, set[str]] = {}
    for i in every:
        if i.target in MODULES and i.target != i.source and (i.source, i.target) not in CIRCLE_EXEMPT:
            edges.setdefault(i.source, set()).add(i.target)
    circles = _cycles(edges)
    described = [" <-> ".join(c) + ": " + _say([i for i in every if i.source in c and i.target in c])
                 for c in circles]
    assert not circles, "\n".join(described)
    stale = [pair for pair in CIRCLE_EXEMPT if not any((i.source, i.target) == pair for i in every)]
    assert not stale, f"CIRCLE_EXEMPT lists imports that are gone: {stale}"


GYM_CHECK = """
import sys
import proximo.llm.grpo, proximo.llm.sft, proximo.llm.rlhf, proximo.llm.reward_model
print(sorted(m for m in sys.modules if m.split('.')[0] in ('gymnasium', 'ale_py', 'pettingzoo')
             or m.startswith(('proximo.envs', 'proximo.evaluate', 'proximo.train', 'proximo.api'))))
import proximo, proximo.nn
from proximo import PPO, PPOConfig, ProximoError, __version__, make_config
from proximo.nn import ActorCritic, RunningMeanStd, make_action_head
assert proximo.PPO is PPO is proximo.api.PPO and proximo.train.Trainer and proximo.nn.policy.ActorCritic is ActorCritic
assert not hasattr(proximo, "no_such_name") and {"PPO", "api"} <= set(dir(proximo))
print("faces hand on their names")
"""


def test_the_llm_trainers_load_no_gym_and_the_lazy_faces_hand_on_every_name():
    """What the rules promise, checked where it counts: a fresh interpreter importing the LLM trainers loads no
    gym; then the lazy faces give every name (and submodule) they gave when they imported eagerly."""
    done = subprocess.run([sys.executable, "-c", GYM_CHECK], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "faces hand on their names"], done.stdout


def test_the_version_has_one_home():
    """pyproject.toml reads the version from proximo/version.py, the face hands on the same value."""
    import proximo
    import proximo.version

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in data["project"] and "version" in data["project"]["dynamic"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "proximo.version.__version__"}
    assert proximo.__version__ == proximo.version.__version__
