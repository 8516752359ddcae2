"""PettingZoo environments by id or factory, and the per-agent observation layout proximo trains on.

An id is `pettingzoo:<module>` where the module has `parallel_env()` or `env()`, as PettingZoo's and
mpe2's do: `pettingzoo:mpe2.simple_spread_v3`, `pettingzoo:pettingzoo.classic.connect_four_v3` (the
`pettingzoo.` prefix and the family may be left out: `pettingzoo:classic.connect_four_v3`,
`pettingzoo:connect_four_v3`). A module with both APIs is used through its parallel one (simultaneous
moves); the turn-based AEC API otherwise. A factory is any callable returning an AECEnv or ParallelEnv.

Every learning agent becomes one lane of a vector env (proximo/multiagent/vector.py). A lane's
observation is one flat float vector: the agent's own observation (flattened, zero-padded to the
widest agent's), then a one-hot agent index (agent_id), then the critic's extra input (critic
state | joint: the env's global state, or every agent's own observation). The actor reads the first
actor_dim entries, the critic all of them (ActorCritic's actor_dim). PettingZoo's `action_mask` key
in a Dict observation becomes the lane's own `action_mask` key, which proximo's masking reads
(proximo/envs/masks.py); agents whose Discrete action counts differ share one head, the extra
actions masked off.
"""
from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from gymnasium import spaces

from proximo.config import CRITICS
from proximo.envs.masks import MASK_KEY
from proximo.errors import ConfigError, ProximoError

PREFIX = "pettingzoo:"
FAMILIES = ("classic", "butterfly", "sisl", "atari", "mpe")  # where a bare PettingZoo env name is looked for
OBSERVATION_KEY = "observation"


def is_pettingzoo(env: Any) -> bool:
    """True for an AECEnv or ParallelEnv instance (wrappers included)."""
    try:
        from pettingzoo import AECEnv, ParallelEnv
    except ImportError:
        return False
    return isinstance(env, (AECEnv, ParallelEnv))


def is_multiagent_env(env: Any, env_kwargs: dict | None = None) -> bool:
    """True when env (an id or a factory) makes a PettingZoo env; a factory is called once to tell."""
    if isinstance(env, str):
        return env.startswith(PREFIX)
    if callable(env):
        made = env()
        try:
            return is_pettingzoo(made)
        finally:
            _close(made)
    return False


def _close(env: Any) -> None:
    try:
        env.close()
    except Exception:  # noqa: BLE001 - closing a probe is best effort
        pass


def _import_module(name: str):
    candidates = [name] + [f"pettingzoo.{family}.{name}" for family in FAMILIES] + [f"pettingzoo.{name}"]
    errors = []
    for candidate in candidates:
        try:
            return importlib.import_module(candidate)
        except ImportError as exc:
            errors.append(f"{candidate}: {exc}")
    raise ProximoError(f"cannot import the PettingZoo env {name!r} ({errors[0]}); give a module with env() or "
                       "parallel_env(), e.g. pettingzoo:mpe2.simple_spread_v3 (pip install -e '.[multiagent]')")


@dataclass
class EnvMaker:
    """Builds fresh copies of one PettingZoo env: from an id (module) or a factory, with kwargs."""

    env: Any
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.env, str):
            if not self.env.startswith(PREFIX):
                raise ProximoError(f"{self.env!r} is not a PettingZoo id; write pettingzoo:<module>")
            module = _import_module(self.env[len(PREFIX):])
            self._fn = getattr(module, "parallel_env", None) or getattr(module, "env", None)
            if self._fn is None:
                raise ProximoError(f"module {module.__name__} has neither parallel_env() nor env(); give a PettingZoo "
                                   "env module")
        elif callable(self.env):
            self._fn = self.env
        else:
            raise ProximoError(f"env must be an id or a callable returning an env, got {self.env!r}")

    def __call__(self):
        """A fresh env (AECEnv or ParallelEnv), checked."""
        made = self._fn(**self.kwargs)
        if not is_pettingzoo(made):
            raise ProximoError(f"env factory {self.env!r} returned {type(made).__name__}, which is neither a "
                               "gymnasium.Env nor a PettingZoo AECEnv or ParallelEnv")
        return made


def is_parallel(env: Any) -> bool:
    """True for the parallel API, False for AEC."""
    from pettingzoo import ParallelEnv
    return isinstance(env, ParallelEnv)


# observations ---------------------------------------------------------------------------------------
def own_space(space: spaces.Space) -> spaces.Space:
    """An agent's observation space without its action mask (PettingZoo's Dict convention)."""
    if isinstance(space, spaces.Dict) and MASK_KEY in space.spaces:
        rest = {k: v for k, v in space.spaces.items() if k != MASK_KEY}
        if set(rest) == {OBSERVATION_KEY}:
            return rest[OBSERVATION_KEY]
        return spaces.Dict(rest)
    return space


def flatten_own(space: spaces.Space, obs: Any) -> np.ndarray:
    """An agent's raw observation (mask left out) as a flat float32 vector [flatdim(own_space(space))]."""
    if isinstance(space, spaces.Dict) and MASK_KEY in space.spaces:
        rest = own_space(space)
        obs = obs[OBSERVATION_KEY] if not isinstance(rest, spaces.Dict) else {k: obs[k] for k in rest.spaces}
        space = rest
    if isinstance(space, spaces.Box):
        return np.asarray(obs, dtype=np.float32).reshape(-1)
    return np.asarray(spaces.flatten(space, obs), dtype=np.float32)


def own_width(space: spaces.Space) -> int:
    """Width of flatten_own() for space; ConfigError for spaces that do not flatten."""
    try:
        return int(spaces.flatdim(own_space(space)))
    except (NotImplementedError, ValueError, TypeError) as exc:
        raise ConfigError(f"observation space {space} does not flatten ({exc}); proximo trains on flat vectors") \
            from None


def has_mask(space: spaces.Space) -> bool:
    """True when the space is PettingZoo's Dict with an action_mask key."""
    return isinstance(space, spaces.Dict) and MASK_KEY in space.spaces


def parse_agent_list(text: str, agents: list[str], what: str) -> list[str]:
    """Agents named by a comma list of names or glob patterns; ConfigError naming one the env lacks."""
    chosen: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        matched = [a for a in agents if fnmatch.fnmatchcase(a, part)]
        if not matched:
            raise ConfigError(f"{what} names {part!r}, which is no agent of this env (its agents: "
                              f"{', '.join(agents)})")
        chosen += [a for a in matched if a not in chosen]
    return chosen


def parse_policy_map(text: str, agents: list[str]) -> tuple[list[str], list[int]] | None:
    """(group names, each agent's group index) of a policy map "name=agent,glob*;other=...", agents in no group
    forming a last group "rest"; None for an empty map or one group. ConfigError names a bad part or agent."""
    if not text.strip():
        return None
    names: list[str] = []
    group_of = [-1] * len(agents)
    for part in (p.strip() for p in text.split(";") if p.strip()):
        name, sep, members = part.partition("=")
        if not sep or not name.strip() or not members.strip():
            raise ConfigError(f"--policy-map part {part!r} is not name=agent,agent; write e.g. "
                              "'adversaries=adversary_*;good=agent_*'")
        for agent in parse_agent_list(members, agents, f"--policy-map group {name.strip()!r}"):
            index = agents.index(agent)
            if group_of[index] >= 0:
                raise ConfigError(f"--policy-map puts {agent} in two groups ({names[group_of[index]]} and "
                                  f"{name.strip()}); give each agent one group")
            group_of[index] = len(names)
        names.append(name.strip())
    if any(g < 0 for g in group_of):
        names.append("rest")
        group_of = [len(names) - 1 if g < 0 else g for g in group_of]
    return (names, group_of) if len(names) > 1 else None


@dataclass
class Layout:
    """How one env's agents become lanes: their observation vector, masks and the shared action space."""

    agents: list[str]                     # every possible agent, in the env's order
    learners: list[str]                   # the agents a policy acts for (every agent, or self-play's seats)
    own_dims: dict[str, int]              # width of each agent's flat own observation
    own_dim: int                          # the widest: every lane's own part is padded to it
    id_dim: int                           # len(agents) with agent_id, else 0
    critic: str                           # own | state | joint (global resolved)
    extra_dim: int                        # width of the critic's extra input
    action_space: spaces.Space            # the lanes' shared action space
    mask_width: int | None                # None: no masks
    agent_masks: dict[str, np.ndarray | None]  # each agent's fixed mask of its own actions (padded spaces)
    observation_spaces: dict[str, spaces.Space]
    groups: list[str] | None = None       # policy groups' names (one policy each), None: one shared policy
    group_of: list[int] | None = None     # each agent's group index, in agents' order

    @property
    def width(self) -> int:
        """Length of a lane's observation vector."""
        return self.own_dim + self.id_dim + self.extra_dim

    @property
    def actor_dim(self) -> int | None:
        """How many leading entries the actor reads (None: all, no centralized critic)."""
        return None if self.critic == "own" else self.own_dim + self.id_dim

    def observation_space(self) -> spaces.Space:
        """A lane's observation space: the flat vector, beside its action mask when the env has masks."""
        box = spaces.Box(-np.inf, np.inf, (self.width,), np.float32)
        if self.mask_width is None:
            return box
        return spaces.Dict({OBSERVATION_KEY: box, MASK_KEY: spaces.Box(0, 1, (self.mask_width,), np.int8)})

    def lane_vector(self, agent: str, obs: Any, extra: np.ndarray | None, out: np.ndarray) -> None:
        """Write one agent's lane observation into out [width] (zeros where not set)."""
        out[:] = 0.0
        own = flatten_own(self.observation_spaces[agent], obs)
        out[:own.shape[0]] = own
        if self.id_dim:
            out[self.own_dim + self.agents.index(agent)] = 1.0
        if extra is not None and self.extra_dim:
            out[self.own_dim + self.id_dim:] = extra

    def lane_mask(self, agent: str, obs: Any) -> np.ndarray:
        """An acting agent's legal actions [mask_width] bool (its env mask, its padding masked off)."""
        fixed = self.agent_masks.get(agent)
        mask = np.ones(self.mask_width, dtype=bool) if fixed is None else fixed.copy()
        if has_mask(self.observation_spaces[agent]):
            env_mask = np.asarray(obs[MASK_KEY], dtype=bool).reshape(-1)
            mask[:env_mask.shape[0]] &= env_mask
        return mask

    def joint_extra(self, observations: dict[str, Any]) -> np.ndarray:
        """Every agent's flat own observation, in env order (zeros for agents without one now)."""
        parts = []
        for agent in self.agents:
            obs = observations.get(agent)
            parts.append(flatten_own(self.observation_spaces[agent], obs) if obs is not None
                         else np.zeros(self.own_dims[agent], dtype=np.float32))
        return np.concatenate(parts)

    def describe(self) -> dict[str, Any]:
        """The layout as JSON (saved with policies so a player can rebuild observations)."""
        return {"agents": self.agents, "learners": self.learners, "own_dim": self.own_dim, "id_dim": self.id_dim,
                "critic": self.critic, "extra_dim": self.extra_dim, "mask_width": self.mask_width}


def _shared_action_space(agents: list[str], action_spaces: dict[str, spaces.Space]
                         ) -> tuple[spaces.Space, dict[str, np.ndarray | None]]:
    first = action_spaces[agents[0]]
    if all(action_spaces[a] == first for a in agents):
        return first, {a: None for a in agents}
    if all(isinstance(action_spaces[a], spaces.Discrete) and int(action_spaces[a].start) == 0 for a in agents):
        widest = max(int(action_spaces[a].n) for a in agents)
        masks = {a: np.arange(widest) < int(action_spaces[a].n) for a in agents}
        return spaces.Discrete(widest), masks
    described = ", ".join(f"{a}: {action_spaces[a]}" for a in agents[:4])
    raise ConfigError(f"one shared policy needs one action space, and these agents differ ({described}); "
                      "proximo shares a head only between Discrete spaces (the extra actions masked off)")


def build_layout(env: Any, critic: str = "own", agent_id: bool = False, learners: list[str] | None = None,
                 policy_map: str = "") -> Layout:
    """The lane layout of a fresh (reset) PettingZoo env for a run's settings; ConfigError when impossible.
    A policy map's groups route each lane by its one-hot agent index, so they turn agent_id on."""
    if critic not in CRITICS:
        raise ConfigError(f"critic must be one of {', '.join(CRITICS)}; got {critic!r}")
    agents = list(env.possible_agents)
    learners = list(learners or agents)
    grouping = parse_policy_map(policy_map, agents)
    observation_spaces = {a: env.observation_space(a) for a in agents}
    action_spaces = {a: env.action_space(a) for a in agents}
    own_dims = {a: own_width(observation_spaces[a]) for a in agents}
    own_dim = max(own_dims[a] for a in learners)
    action_space, agent_masks = _shared_action_space(learners, action_spaces)
    masked = any(has_mask(observation_spaces[a]) for a in learners) or any(m is not None for m in agent_masks.values())
    mask_width = int(action_space.n) if masked and isinstance(action_space, spaces.Discrete) else None
    if masked and mask_width is None:
        raise ConfigError(f"the agents' observations carry action masks, but the action space is {action_space}; "
                          "masks apply to Discrete actions")
    resolved, extra_dim = critic, 0
    if critic in ("state", "global"):
        state_dim = _state_width(env)
        if state_dim is None and critic == "state":
            raise ConfigError("critic=state, but this env has no global state (its state() is not implemented); use "
                              "--critic joint (every agent's observation) or --critic own (IPPO)")
        if state_dim is not None:
            resolved, extra_dim = "state", state_dim
        else:
            resolved = "joint"
    if resolved == "joint":
        frames = [a for a in agents if _is_frames(own_space(observation_spaces[a]))]
        if frames:
            raise ConfigError(f"a centralized critic needs a global state, and this env has none (state() is not "
                              f"implemented) and no way to build one: {frames[0]}'s observations are frames, which "
                              "proximo does not join; use --critic own (IPPO)")
        extra_dim = sum(own_dims.values())
    return Layout(agents, learners, own_dims, own_dim, len(agents) if agent_id or grouping else 0, resolved,
                  extra_dim, action_space, mask_width, agent_masks, observation_spaces,
                  *(grouping if grouping else (None, None)))


def _is_frames(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def _state_width(env: Any) -> int | None:
    """Width of env.state() flattened, or None when the env has no global state."""
    try:
        state = env.state()
    except (NotImplementedError, AttributeError):
        return None
    return int(np.asarray(state).size)


def env_state(env: Any) -> np.ndarray:
    """The env's global state as a flat float32 vector."""
    return np.asarray(env.state(), dtype=np.float32).reshape(-1)


def make_checked(maker: Callable[[], Any], seed: int = 0):
    """A fresh env, reset with seed (PettingZoo envs know their spaces and state only after a reset)."""
    env = maker()
    env.reset(seed=seed)
    return env
