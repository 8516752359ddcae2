"""Fuzzed loaders: every file proximo reads back, mutated, ends in proximo's one-line error or loads.

Each target starts from a real file proximo wrote and mutates it: truncation, byte flips, inserted junk,
JSON values replaced by values of other types (huge integers, NaN, nested lists), deleted keys, and for
safetensors files the header's dtypes, shapes, offsets and length prefix. A load must return normally or
raise a ProximoError (ConfigError, CheckpointError: what the CLI prints as one line with exit status 2);
anything else, or a load running past HANG_S, fails the test.

Bounded for CI: PROXIMO_FUZZ_EXAMPLES (default 40) examples per target, a 2 s deadline per example.
PROXIMO_FUZZ_SURVEY=1 records unexpected exceptions instead of failing (how benchmarks/results/fuzz.md
counted crashes before the fixes), and PROXIMO_FUZZ_REPORT=FILE writes the per-target counts as JSON.
"""
from __future__ import annotations

import atexit
import collections
import json
import math
import os
import shutil
import signal
import struct
import traceback
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis: pip install -e '.[dev]'")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from proximo.checkpoint import load_json, load_tensors  # noqa: E402
from proximo.config import load_preset_file, make_config  # noqa: E402
from proximo.errors import ProximoError  # noqa: E402
from proximo.metrics import drop_rows_after  # noqa: E402
from proximo.spaces_json import space_from_json  # noqa: E402
from proximo.train import STATE_META, STATE_TENSORS, Trainer, list_checkpoints, load_policy, read_run_config  # noqa: E402

EXAMPLES = int(os.environ.get("PROXIMO_FUZZ_EXAMPLES", "40"))
SURVEY = os.environ.get("PROXIMO_FUZZ_SURVEY") == "1"
HANG_S = 10
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, derandomize=not SURVEY, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
TRIED: collections.Counter = collections.Counter()
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
CRASHES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def _write_report() -> None:
    path = os.environ.get("PROXIMO_FUZZ_REPORT")
    if path and TRIED:
        Path(path).write_text(json.dumps({"tried": TRIED, "outcomes": OUTCOMES,
                                          "crashes": {k: dict(v) for k, v in CRASHES.items()}}, indent=2) + "\n")


atexit.register(_write_report)


class Hang(Exception):
    """A load ran past HANG_S."""


def _alarm(signum, frame):
    raise Hang(f"a load ran past {HANG_S} s")


def check_load(target: str, load) -> None:
    """Run load(); it may succeed or raise a ProximoError, nothing else (and not hang)."""
    TRIED[target] += 1
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fallback to an older checkpoint warns; that is fine here
            load()
        OUTCOMES[target]["loaded"] += 1
    except ProximoError as exc:
        assert "\n" not in str(exc).strip(), f"{target}: a multi-line error: {exc}"
        OUTCOMES[target][type(exc).__name__] += 1
    except Exception as exc:  # noqa: BLE001 - anything else is what the fuzzer looks for
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno} ({frame.name})"
        if not SURVEY:
            raise AssertionError(f"{target}: unhandled {where}: {exc}") from exc
        CRASHES[target][where] += 1
        OUTCOMES[target]["crash"] += 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# mutations ---------------------------------------------------------------------------------------

ODD_NUMBERS = st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, -10**30, 1e308, -0.0, math.nan, math.inf, -math.inf])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | ODD_NUMBERS | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def byte_mutations(base: bytes):
    """Truncations, byte flips and inserted junk of base."""
    size = len(base)
    flips = st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=8)
    return st.one_of(
        st.integers(0, size - 1).map(lambda k: base[:k]),
        flips.map(lambda pairs: _flip(base, pairs)),
        st.tuples(st.integers(0, size), st.binary(min_size=1, max_size=32)).map(
            lambda t: base[:t[0]] + t[1] + base[t[0]:]))


def _flip(base: bytes, pairs) -> bytes:
    data = bytearray(base)
    for index, value in pairs:
        data[index] = value
    return bytes(data)


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for index, value in enumerate(tree[:6]):  # long lists (Box bounds, RNG keys): their head is enough
            yield from _paths(value, prefix + (index,))


def mutate_tree(data, tree):
    """A copy of a JSON tree with 1-3 nodes replaced by other values or deleted (drawn from data)."""
    tree = json.loads(json.dumps(tree))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(tree))
        path = data.draw(st.sampled_from(paths))
        if not path:
            tree = data.draw(JSON_VALUES)
            continue
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(JSON_VALUES)
    return tree


def json_mutation(data, base: bytes) -> bytes:
    """Either a byte-level mutation of a JSON file or a tree-level one (NaN and Infinity spelled as Python does)."""
    if data.draw(st.booleans()):
        return data.draw(byte_mutations(base))
    return json.dumps(mutate_tree(data, json.loads(base))).encode()


SAFETENSORS_DTYPES = st.sampled_from(["F16", "BF16", "F32", "F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "XX", ""])
SAFETENSORS_SHAPES = st.sampled_from([[], [0], [-1], [1, -2], [10**12], [2**64], [3, 10**9, 10**9], [1, 1, 1, 1, 1]])
OFFSETS = st.sampled_from([[0, 0], [0, 10**15], [8, 4], [-1, 3], [0, 2**64], [4, 4]])


def safetensors_mutation(data, base: bytes) -> bytes:
    """A safetensors file with a damaged header (dtype, shape, offsets, length prefix, JSON) or damaged bytes."""
    (length,) = struct.unpack("<Q", base[:8])
    header, body = json.loads(base[8:8 + length]), base[8 + length:]
    kind = data.draw(st.sampled_from(["bytes", "dtype", "shape", "offsets", "prefix", "tree"]))
    if kind == "bytes":
        return data.draw(byte_mutations(base))
    if kind == "prefix":
        return struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1))) + base[8:]
    names = [key for key in header if key != "__metadata__"]
    name = data.draw(st.sampled_from(names))
    if kind == "tree":
        header = mutate_tree(data, header)
    else:
        field, values = {"dtype": ("dtype", SAFETENSORS_DTYPES), "shape": ("shape", SAFETENSORS_SHAPES),
                         "offsets": ("data_offsets", OFFSETS)}[kind]
        header[name][field] = data.draw(values)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


# fixtures: real files proximo wrote --------------------------------------------------------------

TRAIN = dict(num_envs=2, n_steps=32, batch_size=32, n_epochs=1, total_steps=64, eval_episodes=1,
             normalize_obs=True, normalize_reward=True, net_arch=[16, 16])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished CartPole run: config.json, metrics.csv, updates.jsonl, a checkpoint and policy/."""
    run = tmp_path_factory.mktemp("fuzz") / "run"
    Trainer("CartPole-v1", make_config(**TRAIN), run, verbose=False, tensorboard=False).train()
    return run


@pytest.fixture(scope="module")
def trainer():
    """A trainer of the same settings, to restore fuzzed checkpoints into (as `train --resume` does)."""
    return Trainer("CartPole-v1", make_config(**TRAIN), None, verbose=False, tensorboard=False)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file():
            (dst / item.name).write_bytes(item.read_bytes())
    return dst


# targets -----------------------------------------------------------------------------------------

@FUZZ
@given(data=st.data(), name=st.sampled_from(["policy.json", "policy.safetensors"]))
def test_policy_files(run_dir, tmp_path_factory, data, name):
    folder = _copy(run_dir / "policy", tmp_path_factory.mktemp("p"))
    mutate = safetensors_mutation if name.endswith(".safetensors") else json_mutation
    (folder / name).write_bytes(mutate(data, (folder / name).read_bytes()))
    check_load(name, lambda: load_policy(folder))


@FUZZ
@given(data=st.data())
def test_state_json_on_resume(run_dir, trainer, tmp_path_factory, data):
    folder = _copy(list_checkpoints(run_dir)[-1], tmp_path_factory.mktemp("c"))
    (folder / STATE_META).write_bytes(json_mutation(data, (folder / STATE_META).read_bytes()))
    check_load("state.json (resume)", lambda: trainer.load_training_state(folder))
    check_load("state.json (load policy)", lambda: load_policy(folder))


@FUZZ
@given(data=st.data())
def test_state_safetensors_on_resume(run_dir, trainer, tmp_path_factory, data):
    folder = _copy(list_checkpoints(run_dir)[-1], tmp_path_factory.mktemp("c"))
    (folder / STATE_TENSORS).write_bytes(safetensors_mutation(data, (folder / STATE_TENSORS).read_bytes()))
    check_load("state.safetensors (resume)", lambda: trainer.load_training_state(folder))


@FUZZ
@given(data=st.data())
def test_run_config_json(run_dir, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("r")
    (folder / "config.json").write_bytes(json_mutation(data, (run_dir / "config.json").read_bytes()))
    check_load("config.json", lambda: read_run_config(folder))


@FUZZ
@given(data=st.data(), step=st.sampled_from([0, 32, 64, 10**20, -1]))
def test_metrics_rows_on_resume(run_dir, tmp_path_factory, data, step):
    folder = tmp_path_factory.mktemp("m")
    for name in ("metrics.csv", "updates.jsonl"):
        base = (run_dir / name).read_bytes()
        mutated = data.draw(byte_mutations(base)) if data.draw(st.booleans()) else \
            base + json.dumps(data.draw(JSON_VALUES)).encode() + b"\n"
        (folder / name).write_bytes(mutated)
        check_load(name, lambda: drop_rows_after(folder / name, step))


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".json", ".yaml"]))
def test_preset_file(tmp_path_factory, data, suffix):
    pytest.importorskip("yaml", reason="YAML preset files need PyYAML (the ray extra)")
    import yaml

    base = {"config": {"learning_rate": 3e-4, "n_steps": 64, "net_arch": [32, 32], "gamma": 0.99}, "_note": "x"}
    tree = mutate_tree(data, base)
    text = (json.dumps(tree) if suffix == ".json" else yaml.safe_dump(tree)).encode()
    if data.draw(st.booleans()):
        text = data.draw(byte_mutations(text))
    path = tmp_path_factory.mktemp("preset") / f"best{suffix}"
    path.write_bytes(text)
    check_load(f"preset file ({suffix})", lambda: make_config(**load_preset_file(path)))


SPACES = [{"type": "Box", "shape": [3], "dtype": "float32", "low": [-1.0, "-inf", 0.0], "high": [1.0, "inf", 2.0]},
          {"type": "Discrete", "n": 4, "start": 0}, {"type": "MultiDiscrete", "nvec": [3, 2]},
          {"type": "MultiBinary", "n": 5},
          {"type": "Dict", "spaces": {"obs": {"type": "Box", "shape": [2], "dtype": "float64", "low": [0.0, 0.0],
                                              "high": [1.0, 1.0]}, "action_mask": {"type": "MultiBinary", "n": 3}}}]


@FUZZ
@given(data=st.data(), index=st.integers(0, len(SPACES) - 1))
def test_spaces_json(data, index):
    tree = mutate_tree(data, SPACES[index])
    check_load("spaces JSON", lambda: space_from_json(tree))


@FUZZ
@given(data=st.data())
def test_tensor_and_json_files(run_dir, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("t")
    (folder / "x.safetensors").write_bytes(safetensors_mutation(data, (run_dir / "policy" /
                                                                          "policy.safetensors").read_bytes()))
    (folder / "x.json").write_bytes(data.draw(byte_mutations((run_dir / "config.json").read_bytes())))
    check_load("load_tensors", lambda: load_tensors(folder / "x.safetensors"))
    check_load("load_json", lambda: load_json(folder / "x.json"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny built-in LM saved as the LLM trainers save one: config.json, model.safetensors, tokenizer, a head."""
    pytest.importorskip("transformers", reason="the LLM loaders need transformers (the llm extra)")
    from proximo.llm.models import ScalarHead, build_builtin, save_model
    from proximo.llm.tokenizer import CharTokenizer

    folder = tmp_path_factory.mktemp("model")
    tokenizer = CharTokenizer()
    save_model(build_builtin("tiny", tokenizer.vocab_size, seed=0), tokenizer, folder, {"value": ScalarHead(8)})
    return folder


LLM_FUZZ = settings(FUZZ, max_examples=max(EXAMPLES // 3, 5))


@LLM_FUZZ
@given(data=st.data(), name=st.sampled_from(["config.json", "proximo_tokenizer.json"]))
def test_llm_model_and_tokenizer_json(model_dir, tmp_path_factory, data, name):
    from proximo.llm.models import load_model

    folder = _copy(model_dir, tmp_path_factory.mktemp("llm"))
    (folder / name).write_bytes(json_mutation(data, (model_dir / name).read_bytes()))
    check_load(f"LLM {name}", lambda: load_model(folder))


@LLM_FUZZ
@given(data=st.data(), name=st.sampled_from(["model.safetensors", "value_head.safetensors"]))
def test_llm_tensor_files(model_dir, tmp_path_factory, data, name):
    from proximo.llm.models import hidden_size, load_head, load_model

    folder = _copy(model_dir, tmp_path_factory.mktemp("llm"))
    (folder / name).write_bytes(safetensors_mutation(data, (model_dir / name).read_bytes()))

    def load():
        model, _, _ = load_model(folder)
        load_head(folder, "value", hidden_size(model))
    check_load(f"LLM {name}", load)


# the command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["policy.json", "config.json", "state.safetensors"])
def test_eval_and_resume_of_a_damaged_run_print_one_line(run_dir, tmp_path, damage, capsys):
    from proximo.cli import main

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    checkpoint = list_checkpoints(run)[-1]
    target = {"policy.json": run / "policy" / "policy.json", "config.json": run / "config.json",
              "state.safetensors": checkpoint / STATE_TENSORS}[damage]
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # truncated, as by a full disk
    command = ["eval", str(run), "--episodes", "1"] if damage == "policy.json" else \
        ["train", "--resume", str(run), "--total-steps", "128", "--quiet"]
    capsys.readouterr()
    assert main(command) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("proximo: error:") and str(target) in lines[0], lines


# cases the random mutations reach rarely, written out ------------------------------------------------

def _claims(meta: dict, claim: str) -> dict:
    meta = json.loads(json.dumps(meta))
    if claim == "actions":
        meta["action_space"]["n"] = 10**9  # 64 GB of action-head weights, were it built
    else:
        meta["config"]["net_arch"] = [2**20, 2**20]
    return meta


@pytest.mark.parametrize("claim", ["actions", "widths"])
def test_a_policy_file_claiming_a_huge_network_allocates_nothing(run_dir, tmp_path, claim):
    folder = _copy(run_dir / "policy", tmp_path / "p")
    (folder / "policy.json").write_text(json.dumps(_claims(json.loads((folder / "policy.json").read_text()), claim)))
    with pytest.raises(ProximoError, match="policy.safetensors"):
        load_policy(folder)


def test_a_yaml_preset_with_number_keys_is_a_config_error(tmp_path):
    pytest.importorskip("yaml", reason="YAML preset files need PyYAML (the ray extra)")
    path = tmp_path / "best.yaml"
    path.write_text("config:\n  1: 2\n  learning_rate: 0.001\n")
    with pytest.raises(ProximoError, match=r"unknown config field\(s\) \['1'\]"):
        load_preset_file(path)


def test_a_metrics_file_with_unreadable_rows_keeps_them(tmp_path):
    path = tmp_path / "updates.jsonl"
    rows = [b'{"global_step": 64}\n', b"\xff\xfe not json\n", b"[1, 2]\n", b'{"global_step": 128}\n']
    path.write_bytes(b"".join(rows))
    assert drop_rows_after(path, 64) == 1
    assert path.read_bytes() == b"".join(rows[:3])  # the damaged rows stay, byte for byte
