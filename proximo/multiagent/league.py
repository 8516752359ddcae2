"""Self-play: the learner's past snapshots as opponents, how a game's opponent is drawn, and ratings.

A snapshot is a frozen copy of the policy (weights and observation statistics) taken every
snapshot_every steps, the first at step 0; with a run directory each is also written to
league/step_<N>/ (policy.json + policy.safetensors, loadable by `proximo eval`). A game's opponent
is the newest snapshot with probability opponent_latest, else one of the older ones (the last
opponent_window of them, 0: all): uniformly, or by prioritized fictitious self-play (pfsp: weight
(1 - s)^2, s the learner's smoothed score against that snapshot, so the ones it still loses to come
up more). Opponents sample their actions from their own policy (the mode for non-Discrete actions).

Ratings come from openskill's Plackett-Luce model (a Bayesian rating in the TrueSkill family): the
learner and every snapshot are players; each finished game rates the learner against its opponent,
and a new snapshot starts from the learner's rating at that moment. league.json in the run directory
holds every snapshot's rating, and metrics.jsonl the learner's per update (`selfplay_rating`).
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from proximo.checkpoint import load_tensors
from proximo.envs.snapshot import generator_from_state
from proximo.errors import ConfigError
from proximo.nn.policy import ActorCritic

SAMPLING = ("uniform", "pfsp")
CACHE = 16  # snapshot networks kept built at once


def _rating_model():
    try:
        from openskill.models import PlackettLuce
    except ImportError:
        raise ConfigError("self-play ratings need openskill: pip install -e '.[multiagent]'") from None
    return PlackettLuce()


class League:
    """The pool of past snapshots a self-play learner plays against (see the module doc)."""

    def __init__(self, make_policy: Callable[[], ActorCritic], latest: float = 0.5, sampling: str = "uniform",
                 window: int = 0, folder: Path | None = None,
                 save: Callable[[Path, ActorCritic], None] | None = None, seed: int = 0) -> None:
        if sampling not in SAMPLING:
            raise ConfigError(f"opponent_sampling must be one of {', '.join(SAMPLING)}; got {sampling!r}")
        self.make_policy, self.latest, self.sampling, self.window = make_policy, latest, sampling, window
        self.folder, self.save = folder, save
        self.model = _rating_model()
        self.snapshots: list[dict[str, Any]] = []   # {"step", "name", "mu", "sigma", "games", "score"}
        self.learner = {"mu": self.model.mu, "sigma": self.model.sigma}
        self.weights: dict[int, dict[str, torch.Tensor]] = {}  # in memory when there is no folder
        self.pending: list[tuple[int, float]] = []  # (opponent, learner's return) since the last update
        self.rng = np.random.default_rng(seed)
        self._built: OrderedDict[int, ActorCritic] = OrderedDict()

    # the pool -----------------------------------------------------------------------------------
    def add(self, policy: ActorCritic, step: int) -> None:
        """Freeze the policy as a new snapshot (rated as the learner is now)."""
        index = len(self.snapshots)
        name = f"step_{step:012d}"
        state = {key: value.detach().cpu().clone() for key, value in policy.state_dict().items()}
        if self.folder is not None and self.save is not None:
            self.save(self.folder / name, policy)
        else:
            self.weights[index] = state
        self.snapshots.append({"step": int(step), "name": name, "mu": self.learner["mu"],
                               "sigma": self.learner["sigma"], "games": 0, "score": 0.0})
        self._built.pop(index, None)
        self.write_table()

    def _policy(self, index: int) -> ActorCritic:
        built = self._built.get(index)
        if built is not None:
            self._built.move_to_end(index)
            return built
        with torch.random.fork_rng(devices=[]):  # building initializes weights: keep the run's RNG untouched
            policy = self.make_policy()
        if index in self.weights:
            policy.load_state_dict(self.weights[index])
        else:
            policy.load_state_dict(load_tensors(self.folder / self.snapshots[index]["name"] / "policy.safetensors"))
        policy.eval()
        self._built[index] = policy
        while len(self._built) > CACHE:
            self._built.popitem(last=False)
        return policy

    # the Opponents protocol (proximo/multiagent/vector.py) -----------------------------------------
    def assign(self, rng: np.random.Generator) -> int:
        """A new game's opponent: the newest snapshot, or an older one by the sampling rule."""
        newest = len(self.snapshots) - 1
        if newest <= 0 or rng.random() < self.latest:
            return newest
        past = np.arange(newest)
        if self.window:
            past = past[-self.window:]
        if self.sampling == "uniform":
            return int(past[rng.integers(len(past))])
        scores = np.array([(self.snapshots[i]["score"] + 1.0) / (self.snapshots[i]["games"] + 2.0) for i in past])
        weights = (1.0 - scores) ** 2 + 1e-6
        return int(rng.choice(past, p=weights / weights.sum()))

    def act(self, opponents: np.ndarray, x: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        """Actions [B] sampled from each row's opponent snapshot for lane vectors x [B, width]."""
        actions = np.zeros(len(opponents), dtype=np.int64)
        with torch.inference_mode():
            for index in np.unique(opponents):
                rows = np.flatnonzero(opponents == index)
                policy = self._policy(int(index))
                obs = policy.normalize(torch.from_numpy(x[rows]))
                mask = None if masks is None else torch.from_numpy(masks[rows])
                dist = policy.distribution(obs, mask)
                if hasattr(dist, "log_probs"):  # Discrete: inverse-CDF draw from the league's own generator
                    cdf = np.cumsum(dist.log_probs.exp().double().numpy(), axis=1)
                    u = self.rng.random(len(rows))[:, None]
                    picked = np.minimum((u >= cdf).sum(axis=1), cdf.shape[1] - 1)
                    if mask is not None:  # rounding can only ever land on the last column: keep it legal
                        legal = masks[rows]
                        bad = ~legal[np.arange(len(rows)), picked]
                        picked[bad] = dist.log_probs[torch.from_numpy(np.flatnonzero(bad))].argmax(-1).numpy()
                    actions[rows] = picked
                else:
                    actions = actions.astype(object)
                    for row, action in zip(rows, dist.mode().numpy()):
                        actions[row] = action
        return actions

    def game_over(self, opponent: int, learner_return: float) -> None:
        """Queue a finished game for rating (win: return > 0, loss: < 0, draw: 0)."""
        self.pending.append((int(opponent), float(learner_return)))

    # ratings ----------------------------------------------------------------------------------------
    def rate(self) -> dict[str, float]:
        """Rate the games finished since the last call, in order; returns this update's self-play metrics."""
        model = self.model
        wins = draws = losses = 0
        for opponent, result in self.pending:
            snap = self.snapshots[opponent]
            learner = model.rating(mu=self.learner["mu"], sigma=self.learner["sigma"])
            other = model.rating(mu=snap["mu"], sigma=snap["sigma"])
            ranks = [0, 1] if result > 0 else [1, 0] if result < 0 else [0, 0]
            [[learner], [other]] = model.rate([[learner], [other]], ranks=ranks)
            self.learner = {"mu": learner.mu, "sigma": learner.sigma}
            snap["mu"], snap["sigma"] = other.mu, other.sigma
            score = 1.0 if result > 0 else 0.0 if result < 0 else 0.5
            snap["games"] += 1
            snap["score"] += score
            wins, draws, losses = wins + (result > 0), draws + (result == 0), losses + (result < 0)
        games = len(self.pending)
        self.pending = []
        if games:
            self.write_table()
        return {"selfplay_rating": self.learner["mu"], "selfplay_rating_sigma": self.learner["sigma"],
                "selfplay_games": games, "selfplay_win_rate": wins / games if games else float("nan"),
                "selfplay_draw_rate": draws / games if games else float("nan"), "league_size": len(self.snapshots)}

    def write_table(self) -> None:
        """league.json beside the snapshots: every snapshot's step and rating, and the learner's."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_json(self.folder / "league.json", {"learner": self.learner, "snapshots": self.snapshots})

    # checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The pool (names, ratings, scores), the queued games, the sampling generator and in-memory weights."""
        state: dict[str, Any] = {"snapshots": [dict(s) for s in self.snapshots], "learner": dict(self.learner),
                                 "pending": [list(p) for p in self.pending], "rng": self.rng.bit_generator.state}
        for index, weights in self.weights.items():
            for key, value in weights.items():
                state[f"weights.{index}.{key}"] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the pool saved by state_dict() (snapshot weights from league/ or from the checkpoint)."""
        self.snapshots = [dict(s) for s in state["snapshots"]]
        self.learner = dict(state["learner"])
        self.pending = [(int(a), float(b)) for a, b in state["pending"]]
        self.rng = generator_from_state(state["rng"], "league RNG")
        self.weights = {}
        for key, value in state.items():
            if key.startswith("weights."):
                _, index, name = key.split(".", 2)
                self.weights.setdefault(int(index), {})[name] = value
        self._built.clear()
        if self.folder is not None:
            missing = [s["name"] for i, s in enumerate(self.snapshots)
                       if i not in self.weights and not (self.folder / s["name"] / "policy.safetensors").is_file()]
            if missing:
                raise ValueError(f"league snapshot {missing[0]} is missing from {self.folder}")


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def wilson_interval(successes: float, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a proportion successes / trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
