"""`proximo export RUN_DIR --format onnx|torchscript -o FILE`: the deterministic policy as one file that
runs without proximo (onnxruntime, or torch alone).

The exported graph is a trace of the policy's own code: ActorCritic.normalize (the saved running mean and
variance, clipped to clip_obs), the actor network, the action distribution's mode(), then what
to_env_actions does to it (Box actions clipped to the bounds, MultiBinary as int8). So it gives what
`PPO.predict(obs, deterministic=True)` gives, for a batch of raw observations.

Both formats come from one torch.jit.trace of that module: TorchScript saves the trace, ONNX goes through
torch.onnx's TorchScript-based exporter (dynamo=False). That exporter takes ~0.1 s and needs no onnxscript;
torch.onnx's dynamo exporter gave the same graph (2.7e-9 apart on 100 observations) in ~9 s and needs
onnxscript, and its symbolic batch size meets shape-dependent branches such as proximo/nn/fast.py's.
"""
from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from proximo.errors import ProximoError
from proximo.extras import install_hint
from proximo.flags import plain_warnings
from proximo.nn.policy import ActorCritic
from proximo.saved import load_policy
from proximo.spaces_json import space_to_json
from proximo.version import __version__

FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "obs", "action"
ONNX_OPSET = 17
INSTALL_HINT = install_hint("onnx")


class ExportError(ProximoError):
    """A policy that the exporter does not handle, or a missing export dependency."""


class DeterministicPolicy(nn.Module):
    """Raw observations [B, *observation_space.shape] -> the env actions predict(deterministic=True) returns.

    Observations are float32 (uint8 for image policies); actions are float32 [B, *shape] for Box,
    int64 [B] for Discrete, int64 [B, k] for MultiDiscrete, int8 [B, n] for MultiBinary.
    """

    def __init__(self, policy: ActorCritic) -> None:
        super().__init__()
        check_exportable(policy)
        self.policy = policy
        space = policy.action_space
        self.box = isinstance(space, spaces.Box)
        self.multibinary = isinstance(space, spaces.MultiBinary)
        if self.box:
            self.action_shape = tuple(space.shape)
            self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32))

    def example(self) -> torch.Tensor:
        """One observation in the graph's input dtype and shape (what the trace runs on)."""
        return example_input(self.policy)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic env actions for a batch of raw observations."""
        policy = self.policy
        if policy.image:
            # encode(): frames to [B, C, H, W]; the torso divides by 255 itself
            x = obs.permute(0, 3, 1, 2) if policy.channels_last else obs
        else:
            x = obs.reshape(obs.shape[0], -1)  # encode() of a Box: float32 [B, D]
        actions = policy.distribution(policy.normalize(x)).mode()
        if self.box:
            # to_env_actions: clipped to the bounds, in the action space's shape
            return torch.minimum(torch.maximum(actions, self.low.reshape(-1)), self.high.reshape(-1)) \
                .reshape(-1, *self.action_shape)
        if self.multibinary:
            return actions.to(torch.int8)
        return actions


def check_exportable(policy: ActorCritic) -> None:
    """Raise ExportError naming what the exporter declines: recurrent policies, Dict or non-Box observations."""
    obs_space, kind = policy.observation_space, policy.recurrent
    if policy.is_recurrent:
        raise ExportError(f"cannot export a recurrent ({kind.upper()}) policy: its state would have to be an input "
                          "and an output of the graph; export supports feedforward policies (recurrent=none)")
    if isinstance(obs_space, spaces.Dict):
        raise ExportError(f"cannot export a policy with Dict observations ({', '.join(obs_space.spaces)}); export "
                          "supports Box observations (flat vectors or uint8 frames)")
    if not isinstance(obs_space, spaces.Box):
        raise ExportError(f"cannot export a policy with {type(obs_space).__name__} observations; export supports "
                          "Box observations (flat vectors or uint8 frames)")


def example_input(policy: ActorCritic, batch: int = 1) -> torch.Tensor:
    """A batch [batch, *observation_space.shape] of observations in the exported graph's input dtype."""
    space = policy.observation_space
    dtype = torch.uint8 if policy.image else torch.float32
    return torch.zeros((batch, *space.shape), dtype=dtype)


def _trace(module: nn.Module) -> torch.jit.ScriptModule:
    # One observation: batch-size branches in the forward pass (proximo/nn/fast.py) take their torch path,
    # and the traced graph keeps the batch dimension symbolic. check_trace would re-run with new random
    # inputs and flag float noise, so it is off; the tests compare against predict().
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit for torch.export
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(module, (module.example(),), check_trace=False)


def metadata(policy: ActorCritic, meta: dict[str, Any]) -> dict[str, str]:
    """What a user of the exported file needs to know, as strings (ONNX metadata_props, TorchScript extra files)."""
    return {"producer": f"proximo {__version__}", "env_id": str(meta.get("env_id")),
            "observation_space": json.dumps(space_to_json(policy.observation_space)),
            "action_space": json.dumps(space_to_json(policy.action_space)),
            "input": f"{INPUT_NAME}: {'uint8' if policy.image else 'float32'} [batch, "
                     f"{', '.join(map(str, policy.observation_space.shape))}] raw observations",
            "output": f"{OUTPUT_NAME}: deterministic env actions [batch, ...]",
            "normalize_obs": str(policy.obs_rms is not None).lower()}


def export_policy(policy: ActorCritic, path: str | Path, fmt: str, meta: dict[str, Any] | None = None,
                  wrap=None) -> Path:
    """Write policy's deterministic actor (with its observation normalization) to path as onnx or torchscript;
    wrap(DeterministicPolicy) -> module puts a different input in front (one agent of a multi-agent run)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"output {path} is a folder; give a file name such as policy.{_suffix(fmt)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A copy, so the caller's policy keeps its device and its parameters their gradients; the graph's
    # weights are constants that need none.
    policy = copy.deepcopy(policy).to("cpu").eval().requires_grad_(False)
    module = DeterministicPolicy(policy).eval()
    info = metadata(policy, meta or {})
    if wrap is not None:
        module = wrap(module).eval()
        info.update(module.describe())
    with torch.no_grad():
        if fmt == "torchscript":
            _trace(module).save(str(path), _extra_files={"proximo.json": json.dumps(info)})
        else:
            _export_onnx(module, path, info)
    return path


def _export_onnx(module: nn.Module, path: Path, info: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError(f"--format onnx needs {INSTALL_HINT}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter is deprecated
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the exporter runs the same torch.jit.trace as _trace
        torch.onnx.export(module, (module.example(),), str(path), dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=ONNX_OPSET,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    model = onnx.load(str(path))
    for key, value in info.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _suffix(fmt: str) -> str:
    return "onnx" if fmt == "onnx" else "pt"


def cmd_export(args: argparse.Namespace) -> int:
    """Load the policy of a run directory, a PPO.save folder or a checkpoint, and write it as one file."""
    # a killed run without policy/ falls back to its newest intact checkpoint: one `proximo:` line says so
    policy, meta = plain_warnings(lambda _: load_policy(Path(args.run_dir), checkpoint=args.checkpoint))(args)
    wrap = None
    if str(meta.get("env_id") or "").startswith("pettingzoo:") or args.agent is not None:
        from proximo.multiagent.export import agent_input  # here: it loads the multi-agent trainer, few exports do

        wrap = agent_input(meta, args.agent)
    out = export_policy(policy, args.output, args.format, meta, wrap)
    source = meta.get("checkpoint") or args.run_dir
    described = _describe(policy)
    if wrap is not None:  # one agent's file takes its own observation, not the lane vector the policy reads
        agent = wrap(policy)
        described = f"{agent.agent}'s obs ({agent.own},) -> {type(policy.action_space).__name__} actions"
    print(f"exported {source} ({described}) -> {out} ({args.format})")
    return 0


def _describe(policy: ActorCritic) -> str:
    obs = "frames" if policy.image else f"obs {tuple(policy.observation_space.shape)}"
    norm = ", normalized" if policy.obs_rms is not None else ""
    return f"{obs}{norm} -> {type(policy.action_space).__name__} actions"


def register(subparsers: Any) -> None:
    """Add `proximo export`."""
    parser = subparsers.add_parser("export", help="write a trained policy as an ONNX or TorchScript file")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run directory, a folder written by PPO.save, or a checkpoint folder")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or torchscript")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--checkpoint", metavar="STEP_N",
                        help="export this checkpoint (step_N or a checkpoint folder) instead of the final policy")
    parser.add_argument("--agent", metavar="NAME", help="multi-agent runs: the agent whose policy to export (its own "
                        "observation in, its action out)")
    parser.set_defaults(handler=cmd_export)

