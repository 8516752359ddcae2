"""The fixed-shape [T, N] rollout buffer and the collector that fills it from vector envs."""
from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from proximo.core.advantages import gae
from proximo.envs.atari import GAME_KEY, GAME_SCORES
from proximo.envs.guard import FAULT_KEY, EnvFaultError
from proximo.envs.masks import ActionMaskSource
from proximo.envs.snapshot import restore_vector_env, snapshot_vector_env
from proximo.checkpoint import CheckpointError
from proximo.errors import NonFiniteError
from proximo.distributed import World
from proximo.nn.normalize import RunningMeanStd
from proximo.nn.policy import ActorCritic


@dataclass
class RolloutBuffer:
    """Preallocated tensors for T steps of N envs. Observations are stored normalized, as acted on."""

    obs: torch.Tensor           # [T, N, *obs_shape]
    actions: torch.Tensor       # [T, N, *action_shape]
    log_probs: torch.Tensor     # [T, N] log pi_old(a|s) of the raw (unclipped) action
    values: torch.Tensor        # [T, N] V_old(s)
    rewards: torch.Tensor       # [T, N] rewards as trained on (scaled if normalize_reward)
    terminated: torch.Tensor    # [T, N] bool: true terminal, no bootstrap
    truncated: torch.Tensor     # [T, N] bool: time limit, bootstrap from V(final obs)
    next_values: torch.Tensor   # [T, N] V of the observation after step t (final obs at truncation)
    advantages: torch.Tensor    # [T, N]
    returns: torch.Tensor       # [T, N] advantages + values: the value target
    action_masks: torch.Tensor | None = None    # [T, N, mask_dim] bool: the legal actions at step t
    episode_starts: torch.Tensor | None = None  # [T, N] bool: obs t begins an episode (recurrent state zeroed)
    rnn_states: torch.Tensor | None = None      # [T / L, N, state_size]: the state at each L-step sequence's start

    @classmethod
    def allocate(cls, n_steps: int, num_envs: int, policy: ActorCritic, masked: bool = False,
                 sequence_length: int = 1) -> "RolloutBuffer":
        """Zeroed tensors shaped for the policy's observation and action spaces, on its device; masks when
        masked, and for a recurrent policy episode starts and a state per sequence_length-step sequence."""
        t_n = (n_steps, num_envs)
        head = policy.action_head
        device = policy.device
        floats = lambda: torch.zeros(t_n, dtype=torch.float32, device=device)  # noqa: E731
        bools = lambda: torch.zeros(t_n, dtype=torch.bool, device=device)  # noqa: E731
        recurrent = policy.is_recurrent
        return cls(
            obs=torch.zeros(t_n + policy.obs_shape, dtype=policy.obs_dtype, device=device),
            actions=torch.zeros(t_n + head.action_shape(), dtype=head.action_dtype(), device=device),
            log_probs=floats(), values=floats(), rewards=floats(),
            terminated=bools(), truncated=bools(),
            next_values=floats(), advantages=floats(), returns=floats(),
            action_masks=torch.zeros(t_n + (policy.mask_dim,), dtype=torch.bool, device=device) if masked else None,
            episode_starts=bools() if recurrent else None,
            rnn_states=torch.zeros(n_steps // sequence_length, num_envs, policy.state_size, device=device)
            if recurrent else None)

    @property
    def sequence_length(self) -> int:
        """Steps per stored sequence (1 for a feedforward policy's rollout)."""
        return 1 if self.rnn_states is None else self.obs.shape[0] // self.rnn_states.shape[0]

    def compute_advantages(self, gamma: float, gae_lambda: float) -> None:
        """Fill advantages and returns by GAE (on the CPU: a backward recursion is T tiny steps, which an
        accelerator would run as ~3T kernel launches; two [T, N] copies each way cost less)."""
        host = [x.cpu() for x in (self.rewards, self.values, self.next_values, self.terminated, self.truncated)]
        advantages, returns = gae(*host, gamma, gae_lambda)
        device = self.values.device
        self.advantages, self.returns = advantages.to(device), returns.to(device)


class RewardScaler(nn.Module):
    """Divides rewards by the running std of the discounted return (per-env running sums).

    One step is advance() (the running returns, whose moments feed return_rms), then scale(); the
    collector merges the moments in between, summed over ranks when the run has several processes.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float) -> None:
        super().__init__()
        self.gamma, self.clip = gamma, clip
        self.return_rms = RunningMeanStd(())
        self.register_buffer("running_return", torch.zeros(num_envs, dtype=torch.float64))

    def advance(self, rewards: np.ndarray) -> np.ndarray:
        """Add raw rewards [N] to the discounted running returns; returns them [N] (a view)."""
        running = self.running_return.numpy()
        running[:] = running * self.gamma + rewards
        return running

    def moments(self, returns: np.ndarray) -> np.ndarray:
        """The packed moments of running returns [N] that return_rms merges (RunningMeanStd.moments)."""
        return self.return_rms.moments(returns)

    def scale(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Rewards [N] divided by the return's running std and clipped; dones reset their running returns."""
        std = float(torch.sqrt(self.return_rms.var + 1e-8))
        self.running_return.numpy()[dones] = 0.0
        return np.clip(rewards / std, -self.clip, self.clip)


class EpisodeTracker:
    """True (unscaled) returns and lengths of finished episodes, per env."""

    def __init__(self, num_envs: int, history: int = 100) -> None:
        self.current_return = np.zeros(num_envs, dtype=np.float64)
        self.current_length = np.zeros(num_envs, dtype=np.int64)
        self.returns: deque[float] = deque(maxlen=history)
        self.lengths: deque[int] = deque(maxlen=history)
        self.finished = 0

    def step(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        """Add one step's raw rewards [N]; close the episodes where dones [N] is true."""
        self.current_return += rewards
        self.current_length += 1
        if dones.any():
            for i in np.flatnonzero(dones):
                self.returns.append(float(self.current_return[i]))
                self.lengths.append(int(self.current_length[i]))
            self.finished += int(dones.sum())
            self.current_return[dones] = 0.0
            self.current_length[dones] = 0

    def state_dict(self) -> dict:
        """The finished episodes (returns, lengths, count) and the ones in progress, as JSON."""
        return {"returns": list(self.returns), "lengths": list(self.lengths), "finished": self.finished,
                "current_return": self.current_return.tolist(), "current_length": self.current_length.tolist()}

    def load_state_dict(self, state: dict, in_progress: bool = True) -> None:
        """Restore the episode history; with in_progress, the running episodes too (their envs carried over)."""
        self.returns.clear()
        self.lengths.clear()
        self.returns.extend(state["returns"])
        self.lengths.extend(state["lengths"])
        self.finished = int(state["finished"])
        if in_progress:
            self.current_return[:] = np.asarray(state["current_return"], dtype=np.float64)
            self.current_length[:] = np.asarray(state["current_length"], dtype=np.int64)

    def record_games(self, infos: dict) -> None:
        """Close the whole games that ended this step, from the env's own statistics (info GAME_KEY, the
        true score of Atari's pipeline: its training episodes end on lost lives and see clipped rewards)."""
        final = infos.get("final_info")
        if not final or GAME_KEY not in final:
            return
        game, ended = final[GAME_KEY], np.asarray(final[f"_{GAME_KEY}"], dtype=bool)
        for i in np.flatnonzero(ended):
            self.returns.append(float(game["r"][i]))
            self.lengths.append(int(game["l"][i]))
        self.finished += int(ended.sum())

    def discard(self, mask: np.ndarray) -> None:
        """Forget the in-progress episodes where mask [N] is true (their env was restarted)."""
        self.current_return[mask] = 0.0
        self.current_length[mask] = 0

    def mean_return(self) -> float:
        """Mean return of the last finished episodes (NaN before the first)."""
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def mean_length(self) -> float:
        """Mean length of the last finished episodes (NaN before the first)."""
        return float(np.mean(self.lengths)) if self.lengths else float("nan")


class EnvFaultWarning(UserWarning):
    """An env raised in step() and was restarted."""


MAX_ENV_RESTARTS = 3  # env faults tolerated per run before it stops with a checkpoint


class RolloutCollector:
    """Steps N envs for T steps with the current policy and fills a RolloutBuffer.

    The observation and return statistics move every vector step; with several processes (world)
    their moments are summed over ranks in one all-reduce per step, so every rank normalizes with
    the statistics of all ranks' envs. The moments of the newest observation are taken when it
    arrives and merged just before it is acted on (the next step, or the next rollout's first).
    """

    def __init__(self, envs, policy: ActorCritic, n_steps: int, gamma: float,
                 normalize_obs: bool, reward_scaler: RewardScaler | None, seed: int,
                 world: World | None = None, mask_source: ActionMaskSource | None = None,
                 sequence_length: int = 1, sde_sample_freq: int = 0) -> None:
        self.envs, self.policy = envs, policy
        self.sde_sample_freq = sde_sample_freq  # gSDE: steps between exploration-matrix draws; 0: once per rollout
        self.num_envs = envs.num_envs
        self.n_steps = n_steps
        self.gamma = gamma
        self.reward_scaler = reward_scaler
        self.mask_source = mask_source
        self.sequence_length = sequence_length
        self.buffer = RolloutBuffer.allocate(n_steps, self.num_envs, policy, mask_source is not None,
                                             sequence_length)
        self.next_masks: np.ndarray | None = None       # [N, mask_dim] legal actions at next_obs
        self.rnn_state: torch.Tensor | None = None      # [N, state_size] after the last step taken
        self.episode_starts: np.ndarray | None = None   # [N] bool: next_obs begins an episode
        self.episodes = EpisodeTracker(self.num_envs)
        # Envs that report whole games (Atari with episodic life): log those, not the training episodes.
        self.game_scores = bool(envs.metadata.get(GAME_SCORES, False))
        self.env_faults = 0  # steps that raised inside an env, over the whole run (restored on resume)
        self.max_env_restarts = MAX_ENV_RESTARTS
        self.world = world if world is not None else World.local()
        self.obs_rms = policy.obs_rms if normalize_obs else None
        self.pending_obs_moments: np.ndarray | None = None  # of next_obs, summed over ranks, not yet merged
        self.reset(seed)

    # Arrays carried between rollouts that a checkpoint must put back exactly (None where unused).
    CARRIED = ("next_masks", "episode_starts", "rnn_state")

    def state_dict(self) -> dict:
        """What continues this rank's rollouts: the next observation (and masks, recurrent state,
        episode starts), the running returns of reward scaling, episodes, env faults and the
        sub-envs' own states (None when proximo cannot save this env family)."""
        state = {"next_obs": self.next_obs, "episodes": self.episodes.state_dict(), "env_faults": self.env_faults,
                 "envs": snapshot_vector_env(self.envs)}
        if self.reward_scaler is not None:
            state["running_return"] = self.reward_scaler.running_return
        for name in self.CARRIED:
            value = getattr(self, name)
            if value is not None:
                state[name] = value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where state_dict() was taken; without saved env states (state["envs"] None)
        only the episode history carries over and the envs keep their fresh reset (envs_restored False)."""
        self.env_faults = int(state.get("env_faults", 0))
        self.envs_restored = state.get("envs") is not None
        if not self.envs_restored:
            self.episodes.load_state_dict(state["episodes"], in_progress=False)
            if self.reward_scaler is not None:
                # The envs restart from reset, so the running sums of their old episodes no longer apply.
                self.reward_scaler.running_return.zero_()
            return
        restore_vector_env(self.envs, state["envs"])
        next_obs = state["next_obs"]
        if next_obs.shape != self.next_obs.shape or next_obs.dtype != self.next_obs.dtype:
            raise CheckpointError(f"the saved next observation is {tuple(next_obs.shape)} {next_obs.dtype}, this "
                                  f"run needs {tuple(self.next_obs.shape)} {self.next_obs.dtype}")
        self.next_obs = next_obs.clone()
        self.pending_obs_moments = None  # recomputed from next_obs, as the uninterrupted run had them
        for name in self.CARRIED:
            mine = getattr(self, name)
            if mine is None:
                continue
            if name not in state or tuple(state[name].shape) != tuple(mine.shape):
                raise CheckpointError(f"the saved {name} is missing or has another shape; this run needs "
                                      f"{tuple(mine.shape)} (resume with the run's settings)")
            value = state[name]
            setattr(self, name, value.to(mine.device).clone() if isinstance(mine, torch.Tensor)
                    else value.numpy().astype(mine.dtype).copy())
        self.episodes.load_state_dict(state["episodes"])
        if self.reward_scaler is not None:
            self.reward_scaler.running_return.copy_(state["running_return"])

    def reset(self, seed: int) -> None:
        """Reset the envs with seed (sub-env i gets seed + i) and forget the episodes in progress."""
        obs, infos = self.envs.reset(seed=seed)
        self.next_obs = self.policy.encode(obs, self.num_envs)
        if self.mask_source is not None:
            self.next_masks = self.mask_source.vector(self.envs, obs, infos)
            self.mask_source.check(self.next_masks, "after reset")
        if self.policy.is_recurrent:
            self.rnn_state = self.policy.initial_state(self.num_envs)
            self.episode_starts = np.ones(self.num_envs, dtype=bool)
        self.pending_obs_moments = None
        self.episodes.discard(np.ones(self.num_envs, dtype=bool))
        if self.reward_scaler is not None:
            self.reward_scaler.running_return.zero_()

    def collect(self) -> RolloutBuffer:
        """Run T steps; returns the filled buffer with advantages not yet computed.

        Per vector step one observation batch goes to the policy's device and one action batch comes
        back; rewards and done flags are staged on the host and cross once per rollout.
        """
        buf, policy, n = self.buffer, self.policy, self.num_envs
        device = policy.device
        truncation_fixes: list[tuple[int, np.ndarray, torch.Tensor]] = []
        # Speed: a fused NumPy actor-critic for this rollout with its noise drawn up front (CPU MLPs);
        # other policies act through torch.
        actor = policy.rollout_actor()
        masked, recurrent = self.mask_source is not None, policy.is_recurrent
        if masked:
            masks_out = buf.action_masks.numpy() if device.type == "cpu" else buf.action_masks
        if recurrent:
            starts_out = buf.episode_starts.numpy() if device.type == "cpu" else buf.episode_starts
            state = self.rnn_state
        if actor is not None:
            actor.draw(self.n_steps, n)
        if device.type == "cpu":
            # NumPy views of the buffer take NumPy arrays and CPU tensors alike, at a fraction of
            # torch's per-write cost; the env outputs are written straight into the buffer.
            obs_out, actions_out = buf.obs.numpy(), buf.actions.numpy()
            log_probs_out, values_out = buf.log_probs.numpy(), buf.values.numpy()
            rewards_host, terminated_host, truncated_host = (
                buf.rewards.numpy(), buf.terminated.numpy(), buf.truncated.numpy())
        else:
            obs_out, actions_out, log_probs_out, values_out = buf.obs, buf.actions, buf.log_probs, buf.values
            rewards_host = np.zeros(buf.rewards.shape, dtype=np.float32)
            terminated_host = np.zeros(buf.terminated.shape, dtype=bool)
            truncated_host = np.zeros(buf.truncated.shape, dtype=bool)
        if self.obs_rms is not None and self.pending_obs_moments is None:  # first rollout, or just resumed
            self.pending_obs_moments = self._shared_moments(self.next_obs.numpy(), None)[0]
        sde = policy.action_head.sde
        with torch.inference_mode():
            for t in range(self.n_steps):
                if sde and (t == 0 or (self.sde_sample_freq and t % self.sde_sample_freq == 0)):
                    policy.reset_noise(n)  # gSDE: new matrices at each rollout's start and every freq steps
                if self.obs_rms is not None:
                    self.obs_rms.update_from_moments(self.pending_obs_moments)
                masks = self.next_masks
                if masked:
                    masks_out[t] = torch.from_numpy(masks) if device.type != "cpu" else masks
                if actor is not None:
                    x = policy.normalize(self.next_obs.numpy())
                    actions, log_probs, values = actor(x, t, masks)
                elif recurrent:
                    x = policy.prepare_encoded(self.next_obs)
                    if t % self.sequence_length == 0:
                        buf.rnn_states[t // self.sequence_length] = state
                    starts = torch.from_numpy(self.episode_starts)
                    starts_out[t] = starts if device.type != "cpu" else self.episode_starts
                    actions, log_probs, values, state = policy.step(
                        x, state, starts.to(device), None if masks is None else torch.from_numpy(masks).to(device))
                else:
                    x = policy.prepare_encoded(self.next_obs)
                    actions, log_probs, values = policy.act(
                        x, masks=None if masks is None else torch.from_numpy(masks).to(device))
                obs, rewards, terminated, truncated, infos = self.envs.step(policy.to_env_actions(actions))
                rewards = np.asarray(rewards, dtype=np.float64)
                if not np.isfinite(rewards).all():
                    bad = np.flatnonzero(~np.isfinite(rewards)).tolist()
                    raise NonFiniteError(f"env {bad[0]} returned a non-finite reward {rewards[bad[0]]} at rollout "
                                         f"step {t} (envs {bad}); fix the env or wrap it to clip its rewards")
                if FAULT_KEY in infos:
                    self._reset_faults(infos)
                faulted = self._env_faults(infos) if "final_info" in infos else None
                if faulted is not None:
                    # A crashed step ends its episode with no bootstrap and no recorded return.
                    terminated, truncated = terminated | faulted, truncated & ~faulted
                dones = terminated | truncated
                if self.game_scores:
                    self.episodes.record_games(infos)
                else:
                    self.episodes.step(rewards, dones if faulted is None else dones & ~faulted)
                if faulted is not None:
                    self.episodes.discard(faulted)
                obs_out[t] = x
                actions_out[t] = actions
                log_probs_out[t] = log_probs
                values_out[t] = values
                terminated_host[t] = terminated
                truncated_host[t] = truncated
                bootstrap = truncated & ~terminated
                if bootstrap.any():
                    envs_idx = np.flatnonzero(bootstrap)
                    final = infos["final_obs"]
                    final_values = policy.final_values(_stack_obs([final[i] for i in envs_idx]), envs_idx,
                                                       state if recurrent else None)
                    truncation_fixes.append((t, envs_idx, final_values))
                if recurrent:
                    self.episode_starts = dones.copy()
                if masked:
                    self.next_masks = self.mask_source.vector(self.envs, obs, infos)
                    self.mask_source.check(self.next_masks, f"at rollout step {t}")
                next_obs_np = policy.encode_np(obs, n)
                self.next_obs = torch.from_numpy(next_obs_np)
                if next_obs_np.dtype.kind == "f" and not np.isfinite(next_obs_np).all():
                    bad = torch.nonzero(~torch.isfinite(self.next_obs.flatten(1)).all(1)).flatten().tolist()
                    raise NonFiniteError(f"env {bad[0]} returned a non-finite observation at rollout step {t} "
                                         f"(envs {bad}); fix the env or wrap it to clip its observations")
                if self.reward_scaler is not None:
                    returns = self.reward_scaler.advance(rewards)
                    self.pending_obs_moments, return_moments = self._shared_moments(next_obs_np, returns)
                    self.reward_scaler.return_rms.update_from_moments(return_moments)
                    rewards = self.reward_scaler.scale(rewards, dones)
                elif self.obs_rms is not None:
                    self.pending_obs_moments = self._shared_moments(next_obs_np, None)[0]
                rewards_host[t] = rewards
            if recurrent:
                self.rnn_state = state
                last_values = policy.value(policy.prepare_encoded(self.next_obs), state,
                                           torch.from_numpy(self.episode_starts).to(device))
            else:
                last_values = policy.value(policy.prepare_encoded(self.next_obs))
        if device.type != "cpu":
            buf.rewards.copy_(torch.from_numpy(rewards_host))
            buf.terminated.copy_(torch.from_numpy(terminated_host))
            buf.truncated.copy_(torch.from_numpy(truncated_host))
        buf.next_values[:-1] = buf.values[1:]
        buf.next_values[-1] = last_values
        for t, envs_idx, final_values in truncation_fixes:
            buf.next_values[t, torch.from_numpy(envs_idx).to(device)] = final_values
        if not torch.isfinite(buf.rewards).all():  # finite in float64, yet past float32's range
            t, i = torch.nonzero(~torch.isfinite(buf.rewards))[0].tolist()
            raise NonFiniteError(f"env {i} returned a reward beyond float32's range (3.4e38) at rollout step {t}; "
                                 "scale the env's rewards down")
        return buf

    def _shared_moments(self, obs: np.ndarray, returns: np.ndarray | None
                        ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(observation moments, return moments) of this step summed over all ranks, in one all-reduce.

        None for a statistic that is off. A missing batch (the returns of a first observation)
        contributes zeros, so the packed layout, and with it the reduction order, never changes.
        """
        parts = []
        if self.obs_rms is not None:
            parts.append(self.obs_rms.moments(obs))
        return_rms = self.reward_scaler.return_rms if self.reward_scaler is not None else None
        if return_rms is not None:
            parts.append(self.reward_scaler.moments(returns) if returns is not None
                         else np.zeros(return_rms.moments_size))
        packed = np.concatenate(parts)
        self.world.all_reduce_sum_(torch.from_numpy(packed))
        split = self.obs_rms.moments_size if self.obs_rms is not None else 0
        return (packed[:split] if self.obs_rms is not None else None,
                packed[split:] if return_rms is not None else None)

    def _reset_faults(self, infos: dict) -> None:
        """Count and warn about envs whose autoreset raised (EnvGuard re-made them); raises past the budget."""
        for i in np.flatnonzero(np.asarray(infos[f"_{FAULT_KEY}"], dtype=bool)):
            self._count_fault(int(i), infos[FAULT_KEY][i], "reset()", "the episode before it had ended normally")

    def _count_fault(self, i: int, detail: str, where: str, consequence: str) -> None:
        self.env_faults += 1
        if self.env_faults > self.max_env_restarts:
            raise EnvFaultError(f"env {i} raised in {where} again ({detail}): {self.env_faults} env faults, "
                                f"more than the {self.max_env_restarts} restarts allowed; fix the env")
        warnings.warn(f"proximo: warning: env {i} raised in {where} ({detail}); re-made and reset it (restart "
                      f"{self.env_faults} of {self.max_env_restarts}); {consequence}", EnvFaultWarning, stacklevel=3)

    def _env_faults(self, infos: dict) -> np.ndarray | None:
        """Mask [N] of envs whose step() raised (EnvGuard restarted them); warns, raises past the budget."""
        final_info = infos["final_info"]
        if FAULT_KEY not in final_info:
            return None
        faulted = np.asarray(final_info[f"_{FAULT_KEY}"], dtype=bool)
        for i in np.flatnonzero(faulted):
            self._count_fault(int(i), final_info[FAULT_KEY][i], "step()",
                              "that step ends its episode with no bootstrap")
        return faulted


def _stack_obs(observations: list):
    """Stack single-env observations (arrays or dicts of arrays) into one batch."""
    if isinstance(observations[0], dict):
        return {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    return np.stack(observations)
