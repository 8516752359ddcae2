"""One typed config for a PPO run, its validation and the named presets."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import math
import os
import re
import typing
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from proximo.core.objectives import OBJECTIVES
from proximo.core.schedules import SCHEDULES
from proximo.nn.recurrent import RECURRENT_KINDS, RNN_INITS
from proximo.nn.spaces import MASKING_MODES
from proximo.diagnostics import DiagnosticsConfig, threshold_fields
from proximo.errors import ConfigError
from proximo.extras import install_hint
from proximo.fielddoc import check_choices, check_field_types, doc  # check_field_types: imported from here too
from proximo.tracking import TRACKERS

ACTIVATIONS = ("tanh", "relu", "elu", "gelu", "silu")
# How many processes a config being built will run on: set around planning a `--nproc K` launch; under
# torchrun every rank reads WORLD_SIZE. batch_size (the global minibatch) is checked against all of them.
_PLANNED_PROCESSES: contextvars.ContextVar[int | None] = contextvars.ContextVar("planned_processes", default=None)


def planned_processes() -> int:
    """Processes the run being configured will have: a --nproc plan's K, else torchrun's WORLD_SIZE, else 1."""
    planned = _PLANNED_PROCESSES.get()
    if planned is not None:
        return planned
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@contextlib.contextmanager
def planning_processes(count: int):
    """Validate configs built inside as configs of a run over `count` processes (`train --nproc count`)."""
    token = _PLANNED_PROCESSES.set(count)
    try:
        yield
    finally:
        _PLANNED_PROCESSES.reset(token)
ENV_BACKENDS = ("sync", "async", "batched")
MINATAR_OBS = ("frames", "flat")  # what MinAtar envs return (proximo/envs/atari.py)
LEARNERS = ("auto", "numpy", "torch")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")
CRITICS = ("own", "state", "joint", "global")  # what a multi-agent run's critic reads (proximo/multiagent/envs.py)
OPPONENT_SAMPLING = ("uniform", "pfsp")        # how self-play draws an older opponent (proximo/multiagent/league.py)


@dataclass
class PPOConfig:
    """Every hyperparameter of a run. Defaults are the PPO paper's MuJoCo settings where it has one.

    Field names follow Stable-Baselines3 where it has the same concept.
    """

    # rollout
    num_envs: int = doc(1, "parallel envs (actors, N) stepped together")
    n_steps: int = doc(2048, "steps per env per rollout (the horizon T); a rollout is num_envs x n_steps samples")
    total_steps: int = doc(1_000_000, "env steps to train for, counted over all envs (and all processes)")
    seed: int = doc(1, "seed of the envs, the network's initialization and the minibatch shuffling")
    # optimization
    learning_rate: float = doc(3e-4, "Adam step size (its start, under lr_schedule)")
    lr_schedule: str = doc("constant", "how the learning rate moves over the run (linear, cosine: to 0 at the end)",
                           choices=SCHEDULES)
    batch_size: int = doc(64, "minibatch size in samples; must divide num_envs x n_steps")
    n_epochs: int = doc(10, "passes (K epochs) over each rollout")
    adam_eps: float = doc(1e-5, "Adam's epsilon")
    max_grad_norm: float | None = doc(0.5, "clip the gradient's global norm to this; none: no clipping")
    # advantages
    gamma: float = doc(0.99, "discount factor")
    gae_lambda: float = doc(0.95, "GAE lambda: 1 is the Monte Carlo return, 0 one-step TD")
    normalize_advantage: bool = doc(True, "standardize advantages within each minibatch")
    # objective
    objective: str = doc("clip", "the policy loss: PPO-Clip, an adaptive or fixed KL penalty, or none, the "
                         "paper's unconstrained ablation", choices=OBJECTIVES)
    clip_range: float = doc(0.2, "PPO-Clip's epsilon: the ratio is clipped to [1 - eps, 1 + eps]")
    clip_schedule: str = doc("constant", "how clip_range moves over the run", choices=SCHEDULES)
    clip_range_vf: float | None = doc(None, "clip the value update to this distance from the old value; none: "
                                      "unclipped value loss")
    kl_coef: float = doc(1.0, "beta of the KL-penalty objectives (its start, if adaptive)")
    kl_target: float = doc(0.01, "d_targ of adaptive_kl: beta halves below d_targ / 1.5 and doubles above 1.5 d_targ")
    ent_coef: float = doc(0.0, "weight of the entropy bonus (c2)")
    ent_schedule: str = doc("constant", "how ent_coef moves over the run", choices=SCHEDULES)
    vf_coef: float = doc(0.5, "weight of the value loss (c1)")
    target_kl: float | None = doc(None, "stop an update's epochs early once the KL passes 1.5 x this; none: never")
    # normalization
    normalize_obs: bool = doc(False, "standardize observations by running statistics (saved with the policy)")
    normalize_reward: bool = doc(False, "divide rewards by the running std of the discounted return")
    clip_obs: float = doc(10.0, "clip normalized observations to +- this")
    clip_reward: float = doc(10.0, "clip scaled rewards to +- this")
    # network
    net_arch: list[int] = doc([64, 64], "hidden layer widths of the actor and the critic MLPs (e.g. 256,256)")
    activation: str = doc("tanh", "activation of the hidden layers", choices=ACTIVATIONS)
    shared_network: bool = doc(False, "one trunk for actor and critic instead of two networks")
    ortho_init: bool = doc(True, "orthogonal initialization (gain sqrt 2 hidden, 0.01 policy head, 1 value head)")
    log_std_init: float = doc(0.0, "initial log standard deviation of Gaussian (Box) actions (with use_sde: of each "
                              "exploration-matrix entry)")
    use_sde: bool = doc(False, "generalized state-dependent exploration (gSDE) for Box actions: the noise is the "
                        "policy's latent times a random matrix held for sde_sample_freq steps (proximo/nn/distributions.py)")
    sde_sample_freq: int = doc(0, "steps between gSDE's matrix draws; 0: once per rollout (SB3's -1)")
    # memory (proximo/nn/recurrent.py) and legal actions (proximo/envs/masks.py)
    recurrent: str = doc("none", "recurrent core of the policy (CLI: also --policy lstm|gru)", choices=RECURRENT_KINDS)
    rnn_hidden: int = doc(128, "units of the recurrent core")
    rnn_layers: int = doc(1, "stacked layers of the recurrent core")
    rnn_init: str = doc("orthogonal", "initialization of the recurrent core under ortho_init: orthogonal weights and "
                        "zero biases, or PyTorch's default uniform +-1/sqrt(rnn_hidden) as sb3-contrib's RecurrentPPO "
                        "keeps (without ortho_init the core always keeps PyTorch's default)", choices=RNN_INITS)
    bptt_len: int = doc(0, "steps per trained sequence of a recurrent policy; 0: the whole n_steps")
    action_masking: str = doc("auto", "legal-action masks: auto uses the env's if it has any, on requires them, off "
                              "ignores them", choices=MASKING_MODES)
    # many agents (proximo/multiagent): PettingZoo envs (`pettingzoo:<module>` ids or factories); there num_envs
    # counts lanes, copies x learning agents, and steps count agent steps
    critic: str = doc("own", "what each agent's critic reads: own (its own observation, IPPO), state (env.state()), "
                      "joint (every agent's observation), global (state, else joint; MAPPO)", choices=CRITICS)
    agent_id: bool = doc(False, "append a one-hot agent index to each agent's observation (one shared policy, "
                         "roles differ)")
    policy_map: str = doc("", "one policy per agent group, e.g. \"name=agent_0,agent_1;other=adversary_*\" (globs; "
                          "unnamed agents form group rest); empty: one shared policy")
    selfplay: bool = doc(False, "two-player games: the learner plays a league of its past snapshots")
    snapshot_every: int = doc(100_000, "agent steps between league snapshots (self-play)")
    opponent_latest: float = doc(0.5, "chance a game's opponent is the newest snapshot (self-play)")
    opponent_sampling: str = doc("uniform", "how an older opponent is drawn: uniform, or pfsp (harder opponents "
                                 "more often) (self-play)", choices=OPPONENT_SAMPLING)
    opponent_window: int = doc(0, "draw older opponents from the newest this many snapshots; 0: all (self-play)")
    # pixels: the Atari pipeline of ALE ids (proximo/envs/atari.py); other envs ignore these
    frame_stack: int = doc(4, "Atari: frames stacked into one observation")
    frame_skip: int = doc(4, "Atari: emulator frames per agent step, max-pooled over the last two")
    noop_max: int = doc(30, "Atari: up to this many no-ops after a reset; 0: off")
    screen_size: int = doc(84, "Atari: side of the square grey frames")
    sticky_actions: float = doc(0.0, "Atari: ALE repeat_action_probability (0: the paper's era; v5's own is 0.25)")
    episodic_life: bool = doc(True, "Atari: a lost life ends the training episode (logged returns: whole games)")
    sign_rewards: bool = doc(True, "Atari: train on sign(reward) (logged returns: the true score)")
    minatar_obs: str = doc("frames", "MinAtar: frames = uint8 [10, 10, C] frames of 0/255 for MinAtar's conv torso; "
                           "flat = the 100 x C cells as one 0/1 vector for an MLP (gymnax-blines' MinAtar agents)",
                           choices=MINATAR_OBS)
    # machinery
    env_backend: str = doc("sync", "how the envs step: sync (all in this process), async (one subprocess each), "
                           "batched (a NumPy twin stepping every copy at once: mpe2's simple_spread_v3)",
                           choices=ENV_BACKENDS)
    device: str = doc("auto", "where the networks and the update run: auto | cpu | cuda | cuda:N | mps (auto: a GPU "
                      "only where it pays)")
    learner: str = doc("auto", "the gradient backend (proximo/learners): numpy's hand-written backward (MLPs, "
                       "MinAtar's CNN; its rollouts too) or torch autograd", choices=LEARNERS)
    torch_threads: int = doc(0, "torch CPU threads; 0: proximo picks (1 for small MLPs)")
    eval_episodes: int = doc(10, "deterministic evaluation episodes at the end (and at each eval_every)")
    eval_every: int = doc(0, "env steps between evaluations on a separate env (best/ kept); 0: off")
    stop_at_return: float | None = doc(None, "stop once the eval return (or without eval_every, the training "
                                       "return) reaches this; none: never")
    stop_patience: int = doc(0, "stop after this many evaluations without improvement; 0: never")
    save_every: int = doc(0, "env steps between checkpoints; 0: only at the end")
    keep_checkpoints: int = doc(3, "newest checkpoints kept on disk")
    log_every: int = doc(1, "updates between metric rows")
    track: str = doc("none", "also send metrics, config and doctor findings to Weights & Biases", choices=TRACKERS)
    track_project: str | None = doc(None, "W&B project (none: $WANDB_PROJECT, else proximo)")
    track_run_name: str | None = doc(None, "W&B run name (none: $WANDB_NAME, else the run directory's name)")
    # health rules (proximo/diagnostics.py: each rule's thresholds, with why each default has its value)
    diagnostics: bool = doc(True, "warn during training when a health rule fires")
    # the thresholds, nested; flags, presets and from_dict also take them flat as diag_<name> (--diag-kl-max)
    diag: DiagnosticsConfig = doc(default_factory=DiagnosticsConfig,
                                  meaning="the health rules' thresholds (flags: --diag-NAME)")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def rollout_size(self) -> int:
        """Samples per rollout: num_envs x n_steps."""
        return self.num_envs * self.n_steps

    @property
    def sequence_length(self) -> int:
        """Steps per sequence the update trains a recurrent policy on (bptt_len, or n_steps); 1 without memory."""
        if self.recurrent == "none":
            return 1
        return self.bptt_len or self.n_steps

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and the fix."""
        check_field_types(self)
        positive_ints = ("num_envs", "n_steps", "total_steps", "batch_size", "n_epochs",
                         "eval_episodes", "keep_checkpoints", "log_every")
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "adam_eps", "clip_obs", "clip_reward"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive finite number, got {value}")
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}")
        if not 0.0 < self.clip_range < 1.0:
            raise ConfigError(f"clip_range must lie in (0, 1), got {self.clip_range}")
        for name in ("clip_range_vf", "target_kl", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive or None, got {value}")
        for name in ("kl_coef", "kl_target", "ent_coef", "vf_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        check_choices(self)  # every field declared with choices= (objective, schedules, learner, ...)
        if self.objective == "adaptive_kl" and self.kl_target <= 0:
            raise ConfigError(f"kl_target must be positive for adaptive_kl, got {self.kl_target}")
        for name in ("rnn_hidden", "rnn_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.bptt_len < 0:
            raise ConfigError(f"bptt_len must be 0 (whole rollouts) or positive, got {self.bptt_len}")
        if self.sde_sample_freq < 0:
            raise ConfigError(f"sde_sample_freq must be 0 (one gSDE draw per rollout) or positive, got "
                              f"{self.sde_sample_freq}")
        if self.recurrent != "none":
            length = self.sequence_length
            if self.n_steps % length:
                divisors = [d for d in range(1, self.n_steps + 1) if self.n_steps % d == 0]
                raise ConfigError(f"bptt_len {length} does not divide n_steps {self.n_steps}; pick a divisor of "
                                  f"n_steps ({', '.join(map(str, divisors[-6:]))}, ...)")
            if self.batch_size % length and self.batch_size < self.rollout_size:
                raise ConfigError(
                    f"batch_size {self.batch_size} is not a whole number of {length}-step sequences (a recurrent "
                    f"policy trains on whole sequences); set batch_size to a multiple of {length}, or bptt_len "
                    f"to a divisor of both {self.batch_size} and n_steps {self.n_steps}")
        if not 0.0 <= self.opponent_latest <= 1.0:
            raise ConfigError(f"opponent_latest must lie in [0, 1], got {self.opponent_latest}")
        if self.snapshot_every < 1 or self.opponent_window < 0:
            raise ConfigError(f"snapshot_every ({self.snapshot_every}) must be at least 1 and opponent_window "
                              f"({self.opponent_window}) not negative")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps; got {self.device!r}")
        if not self.net_arch or any(width < 1 for width in self.net_arch):
            raise ConfigError(f"net_arch must be a non-empty list of positive widths, got {self.net_arch}")
        # batch_size is the global minibatch: it must divide the rollout of every process together.
        processes = planned_processes()
        rollout = self.rollout_size * processes
        if rollout % self.batch_size != 0:
            divisors = [d for d in range(processes, rollout + 1, processes) if rollout % d == 0]
            near = min(divisors, key=lambda d: abs(d - self.batch_size))
            raise ConfigError(
                f"batch_size {self.batch_size} does not divide "
                + (f"{processes} processes x num_envs x n_steps = {processes} x " if processes > 1
                   else "num_envs x n_steps = ")
                + f"{self.num_envs} x {self.n_steps} = {rollout}; use a divisor such as {near}")
        for name in ("frame_stack", "frame_skip", "screen_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)} (the Atari default is "
                                  f"{getattr(PPOConfig, name)})")
        if self.noop_max < 0:
            raise ConfigError(f"noop_max must not be negative, got {self.noop_max}; 0 turns the no-op reset off")
        if not 0.0 <= self.sticky_actions < 1.0:
            raise ConfigError(f"sticky_actions must lie in [0, 1), got {self.sticky_actions}; 0.25 is ALE v5's value")
        if self.torch_threads < 0 or self.save_every < 0:
            raise ConfigError("torch_threads and save_every must not be negative")
        if self.eval_every < 0 or self.stop_patience < 0:
            raise ConfigError(f"eval_every ({self.eval_every}) and stop_patience ({self.stop_patience}) must not be "
                              "negative; 0 turns them off")
        if self.stop_patience and not self.eval_every:
            raise ConfigError(f"stop_patience={self.stop_patience} counts evaluations, and eval_every is 0; set "
                              "--eval-every STEPS as well")
        self.diag.validate()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (the thresholds nested under "diag")."""
        return dataclasses.asdict(self)

    def flat_dict(self) -> dict[str, Any]:
        """Every field by the name flags, presets and grids set it: the thresholds as diag_<name>."""
        data = self.to_dict()
        data.update({f"diag_{name}": value for name, value in data.pop("diag").items()})
        return data

    def to_json(self) -> str:
        """The config as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PPOConfig":
        """Build from a dict, rejecting unknown keys by name. Thresholds may be nested ("diag", as to_dict
        writes them) and flat (diag_<name>, as flags, presets and runs written before the nesting have them);
        a flat one wins."""
        unknown = sorted(set(data) - config_keys())
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; see `proximo train --help`")
        fields = {key: value for key, value in data.items() if key != "diag" and not key.startswith("diag_")}
        return cls(**fields, diag=DiagnosticsConfig.from_object(data))

    def replace(self, **overrides: Any) -> "PPOConfig":
        """A validated copy with some fields changed."""
        return PPOConfig.from_dict({**self.to_dict(), **overrides})


def field_types() -> dict[str, Any]:
    """Resolved type hints of every config field by the name flags, presets and grids set it: PPOConfig's own,
    with the nested thresholds as diag_<name>."""
    hints: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(PPOConfig).items():
        if name == "diag":
            hints.update({f"diag_{f.name}": f.type for f in threshold_fields()})
        else:
            hints[name] = hint
    return hints


def config_keys() -> set[str]:
    """The keys a config dict may hold: every field_types() name and the nested "diag"."""
    return {*field_types(), "diag"}


PRESETS: dict[str, dict[str, Any]] = {
    # Schulman et al. 2017, MuJoCo table: 1 actor, horizon 2048, Adam 3e-4, 10 epochs, minibatch 64.
    "paper-mujoco": dict(num_envs=1, n_steps=2048, learning_rate=3e-4, n_epochs=10, batch_size=64,
                         gamma=0.99, gae_lambda=0.95, clip_range=0.2, net_arch=[64, 64],
                         activation="tanh", ent_coef=0.0, vf_coef=0.5, total_steps=1_000_000),
    # Paper Atari table: 8 actors, horizon 128, lr 2.5e-4 x alpha, 3 epochs, minibatch 32 x 8,
    # clip 0.1 x alpha, c1 = 1, c2 = 0.01, 10M timesteps = 40M frames (alpha annealed 1 -> 0).
    # Network as in the paper (Mnih et al. 2015's): the Nature conv torso, one shared 512-unit ReLU
    # layer, linear policy and value heads. Frames: skip 4, stack 4, 84x84, no-op reset, episodic
    # life and sign rewards in training, sticky actions off (the field defaults).
    "paper-atari": dict(num_envs=8, n_steps=128, learning_rate=2.5e-4, lr_schedule="linear",
                        n_epochs=3, batch_size=256, gamma=0.99, gae_lambda=0.95, clip_range=0.1,
                        clip_schedule="linear", vf_coef=1.0, ent_coef=0.01, max_grad_norm=0.5,
                        net_arch=[512], activation="relu", shared_network=True,
                        total_steps=10_000_000),
    # MinAtar (10x10 frames): MinAtar's own network (one 16x3x3 conv, 128 ReLU units, shared) under the
    # paper-atari PPO settings with 4 epochs and a constant clip range, 3M steps.
    "minatar": dict(num_envs=8, n_steps=128, learning_rate=2.5e-4, lr_schedule="linear",
                    n_epochs=4, batch_size=256, gamma=0.99, gae_lambda=0.95, clip_range=0.2,
                    clip_schedule="constant", vf_coef=0.5, ent_coef=0.01, max_grad_norm=0.5,
                    net_arch=[128], activation="relu", shared_network=True, total_steps=3_000_000),
    # gymnax-blines' PPO for MinAtar (agents/<Game>-MinAtar/ppo.yaml, the same for every game): 64 envs x 128
    # steps, 4 epochs of 8 minibatches, Adam 5e-4 constant (its warm-up goes from 5e-4 to 5e-4) with eps 1e-5,
    # clip 0.2 (the value too), gamma 0.999, lambda 0.95, entropy 0.01, grad norm 0.5, separate 2 x 256 ReLU
    # MLPs for actor and critic on the flattened 0/1 frame; 10M steps. Its value term is critic_coeff 0.5 times
    # 0.5 x the mean squared error, proximo's vf_coef multiplies the mean squared error itself: 0.25.
    "minatar-mlp": dict(num_envs=64, n_steps=128, batch_size=1024, n_epochs=4, learning_rate=5e-4,
                        lr_schedule="constant", adam_eps=1e-5, gamma=0.999, gae_lambda=0.95, clip_range=0.2,
                        clip_range_vf=0.2, ent_coef=0.01, vf_coef=0.25, max_grad_norm=0.5, net_arch=[256, 256],
                        activation="relu", shared_network=False, minatar_obs="flat", total_steps=10_000_000),
    # The same gymnax-blines PPO settings with MinAtar's own network (the `minatar` preset's: one 16x3x3 conv over
    # the uint8 frames, 128 ReLU units, one trunk for actor and critic) instead of the MLPs: issue 29's CNN setting.
    "minatar-cnn": dict(num_envs=64, n_steps=128, batch_size=1024, n_epochs=4, learning_rate=5e-4,
                        lr_schedule="constant", adam_eps=1e-5, gamma=0.999, gae_lambda=0.95, clip_range=0.2,
                        clip_range_vf=0.2, ent_coef=0.01, vf_coef=0.25, max_grad_norm=0.5, net_arch=[128],
                        activation="relu", shared_network=True, minatar_obs="frames", total_steps=10_000_000),
    # rl-zoo's tuned CartPole-v1 settings.
    "cartpole": dict(num_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                     n_epochs=20, learning_rate=1e-3, lr_schedule="linear", clip_range=0.2,
                     clip_schedule="linear", ent_coef=0.0, total_steps=100_000),
    # proximo's MuJoCo settings: 8 actors x 256 steps (batched inference), obs normalization and
    # reward scaling, linear lr annealing, 256x256 networks and a smaller initial std (e^-0.5).
    # At 300k steps on seed 1 this scored HalfCheetah 4447 / Hopper 2941 against 1251 / 1249 for
    # the same settings with 2x64 networks and log-std 0 (benchmarks/results/mujoco-mujoco.md).
    "mujoco": dict(num_envs=8, n_steps=256, batch_size=64, n_epochs=10, learning_rate=3e-4,
                   lr_schedule="linear", gamma=0.99, gae_lambda=0.95, clip_range=0.2,
                   normalize_obs=True, normalize_reward=True, ent_coef=0.0, vf_coef=0.5,
                   max_grad_norm=0.5, net_arch=[256, 256], log_std_init=-0.5, total_steps=1_000_000),
}


# Per-env entries of a preset, the way rl-zoo keeps one table of tuned values per env id. An entry applies
# over its preset's values when the run's env id matches exactly, and explicit overrides (CLI flags, Python
# keywords, a preset file) apply over it. This is data, so that a new task is a new row, not a code branch:
# each entry holds the fields it changes ("values", may be empty) and where they come from ("source").
PRESET_ENVS: dict[str, dict[str, dict[str, Any]]] = {
    "mujoco": {
        # The three tasks the preset was tuned on keep its values: 1M steps, 3 seeds, above every anchor.
        "HalfCheetah-v5": dict(values={}, source="the preset's own values, tuned on this task "
                                                 "(benchmarks/results/mujoco-mujoco.md)"),
        "Hopper-v5": dict(values={}, source="the preset's own values, tuned on this task "
                                            "(benchmarks/results/mujoco-mujoco.md)"),
        "Walker2d-v5": dict(values={}, source="the preset's own values, tuned on this task "
                                              "(benchmarks/results/mujoco-mujoco.md)"),
        # Ant: the preset's own step is too large for its 8-dim actions (clip fraction > 0.4 in 454 of 489
        # updates, KL > 0.05 in 440: eval 321). A 3x smaller learning rate keeps KL near 0.016 and clip fraction
        # near 0.25 (benchmarks/results/mujoco-v5-probes.md); rl-zoo's tuned Ant rows go lower still (1.9e-5 to 3e-5).
        "Ant-v5": dict(values=dict(learning_rate=1e-4),
                       source="proximo probe under the doctor's KL and clip-fraction rules "
                              "(benchmarks/results/mujoco-v5-probes.md)"),
        # Swimmer needs a long horizon (its reward is forward speed and a stroke takes hundreds of steps):
        # rl-zoo's tuned Swimmer row, which reaches ~280 at 1M where gamma 0.99 stalls near 50-110.
        "Swimmer-v5": dict(values=dict(gamma=0.9999, gae_lambda=0.98, num_envs=4, n_steps=1024, batch_size=256,
                                       learning_rate=6e-4, lr_schedule="constant", net_arch=[64, 64],
                                       log_std_init=0.0),
                           source="rl-zoo hyperparams/ppo.yml Swimmer (SB3's default 64x64 policy)"),
        # The rest: the network and initial std of the runs that set each task's anchor (CleanRL's
        # ppo_continuous_action and baselines' ppo2 both use 64x64 tanh and log-std 0 with obs and reward
        # normalization), under the preset's rollout and schedule; the small network also makes the update
        # cheaper (Ant probe: ~1.5x the steps/s of 256x256).
        # Humanoid at the preset's 3e-4: clip fraction above 0.4 in 410-418 of 489 updates and KL above 0.05 in
        # 335-345 (seeds 2, 3: eval 548, 636); at 1e-4 no rule fires and seed 1 went 683 -> 790
        # (benchmarks/results/mujoco-v5-humanoid-lr1e-4.md), the same cure as Ant's.
        "Humanoid-v5": dict(values=dict(net_arch=[64, 64], log_std_init=0.0, learning_rate=1e-4),
                            source="CleanRL ppo_continuous_action network (716 +- 49 on Humanoid-v4 at 1M) with "
                                   "a proximo probe's learning rate under the doctor's clip and KL rules "
                                   "(benchmarks/results/mujoco-v5-humanoid-lr1e-4.md)"),
        # HumanoidStandup at 3e-4 fired the same clip-fraction and KL rules as Humanoid; at 1e-4 none fires on 3
        # seeds, training return rises (150,097 -> 154,768) and deterministic eval falls (153,628 -> 140,162).
        # It has no 1M anchor, so it takes Humanoid's cure, the step the doctor finds healthy.
        "HumanoidStandup-v5": dict(values=dict(net_arch=[64, 64], log_std_init=0.0, learning_rate=1e-4),
                                   source="CleanRL ppo_continuous_action network with a proximo probe's learning "
                                          "rate under the doctor's clip and KL rules "
                                          "(benchmarks/results/mujoco-v5-lr1e-4-probes.md)"),
        "InvertedPendulum-v5": dict(values=dict(net_arch=[64, 64], log_std_init=0.0),
                                    source="CleanRL ppo_continuous_action defaults (963 +- 22 at 1M)"),
        "InvertedDoublePendulum-v5": dict(values=dict(net_arch=[64, 64], log_std_init=0.0),
                                          source="OpenAI baselines ppo2 mujoco network (7103 at 1M)"),
        "Reacher-v5": dict(values=dict(net_arch=[64, 64], log_std_init=0.0),
                           source="OpenAI baselines ppo2 mujoco network (-6.71 at 1M)"),
        "Pusher-v5": dict(values=dict(net_arch=[64, 64], log_std_init=0.0),
                          source="CleanRL ppo_continuous_action defaults (-40.4 +- 7.2 at 1M)"),
    },
}


def preset_entry(preset: str | None, env_id: str | None) -> dict[str, Any] | None:
    """The per-env entry of a preset for an env id ({"values", "source"}), or None where it has none."""
    if preset is None or env_id is None:
        return None
    return PRESET_ENVS.get(preset, {}).get(env_id)


def preset_values(preset: str | None, env_id: str | None = None) -> dict[str, Any]:
    """The fields a preset sets for an env id: its own values, then its entry for that env (if any)."""
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    entry = preset_entry(preset, env_id)
    return {**PRESETS[preset], **(entry["values"] if entry else {})}


def describe_preset(preset: str | None, env_id: str | None, overrides: dict[str, Any] | None = None) -> str | None:
    """One line saying which preset values a run uses and where they come from; None without a preset."""
    if preset is None:
        return None
    overrides = overrides or {}
    entry = preset_entry(preset, env_id)
    if entry is None:
        line = f"preset {preset}: its own values" + (f" (it has no entry for {env_id})" if preset in PRESET_ENVS else "")
    else:
        used = {k: v for k, v in entry["values"].items() if k not in overrides}
        shown = ", ".join(f"{k}={v}" for k, v in used.items()) or "no changes to the preset"
        line = f"preset {preset} + {env_id} entry: {shown} (source: {entry['source']})"
        beaten = sorted(k for k in entry["values"] if k in overrides)
        if beaten:
            line += f"; overridden by flags: {', '.join(f'{k}={overrides[k]}' for k in beaten)}"
    return line


def check_preset_envs(table: dict[str, dict[str, dict[str, Any]]] | None = None) -> None:
    """Raise ConfigError naming the first per-env entry that names an unknown preset or field, lacks a source,
    or makes an invalid config."""
    table = PRESET_ENVS if table is None else table
    known = config_keys()  # the flat names, diag_<threshold> included
    for preset, entries in table.items():
        if preset not in PRESETS:
            raise ConfigError(f"per-env table for unknown preset {preset!r}; name one of {', '.join(PRESETS)}")
        for env_id, entry in entries.items():
            where = f"preset {preset} entry {env_id}"
            if set(entry) != {"values", "source"}:
                raise ConfigError(f"{where} must hold exactly 'values' and 'source', got {sorted(entry)}")
            if not str(entry["source"]).strip():
                raise ConfigError(f"{where} has an empty source; say where its values come from")
            unknown = sorted(set(entry["values"]) - known)
            if unknown:
                raise ConfigError(f"{where} sets unknown config field(s) {unknown}; use PPOConfig field names")
            try:
                PPOConfig.from_dict({**PRESETS[preset], **entry["values"]})
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None


def make_config(preset: str | None = None, env_id: str | None = None, **overrides: Any) -> PPOConfig:
    """A validated config: the preset's values (if any), its entry for env_id (if any), then the overrides."""
    return PPOConfig.from_dict({**preset_values(preset, env_id), **overrides})


def load_preset_file(path: str | Path) -> dict[str, Any]:
    """Config fields from a preset file (JSON or YAML: {"config": {...}} or a flat mapping of fields)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"preset file {path} does not exist; give the path of a JSON file such as best.json")
    data = read_mapping(path, "preset file")
    values = data.get("config", data) if isinstance(data.get("config"), dict) else data
    values = {key: value for key, value in values.items() if not str(key).startswith("_")}
    unknown = sorted(map(str, set(values) - config_keys()))  # YAML keys may be numbers
    if unknown:
        raise ConfigError(f"preset file {path} sets unknown config field(s) {unknown}; see `proximo train --help`")
    return values


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A JSON or YAML file that must hold one mapping, or a ConfigError naming the file and what is wrong."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); fix the file") from None
    yaml_file = path.suffix.lower() in (".yaml", ".yml")
    if yaml_file:
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{what} {path} is YAML, which needs {install_hint('yaml')} (or write the "
                              "file as JSON)") from None
    try:
        if yaml_file:
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json and yaml raise their own error types; both mean the same to a user
        raise ConfigError(f"{what} {path} is not valid {path.suffix.lstrip('.') or 'JSON'} "
                          f"({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data
