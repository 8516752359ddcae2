"""Each agent's own steps out of a multi-agent rollout: rewards and ends credited to the move that earned
them, GAE along each agent's moves, and the steps where an agent did not move left out.

The collector fills a [T, N] buffer with one row per vector step and lane (proximo/multiagent/vector.py).
A lane moves only at its `acting` rows: in a turn-based game the other seats' turns and, in any game,
the steps after its agent left are idle rows. The rewards and ends reported on a lane's idle rows
belong to its latest move, so each move's reward is the sum from its row up to (not including) the
lane's next move, and its successor for GAE is that next move. A move whose outcome is still open
when the rollout ends (the other seat has not answered yet) is carried into the next rollout and
trained there, once its reward is known; its log-probability and value are the ones it was taken
with, so PPO's ratio treats it like any other sample of the behaviour policy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from proximo.core.advantages import gae
from proximo.rollout import RolloutBuffer

STEP_FIELDS = ("obs", "actions", "log_probs", "values", "action_masks")


@dataclass
class OpenMoves:
    """One lane's move whose outcome is not known yet, per lane: the stored step and the reward so far."""

    open: torch.Tensor        # [N] bool: the lane holds an open move
    reward: torch.Tensor      # [N] float64: rewards credited to it so far
    obs: torch.Tensor         # [N, *obs_shape]
    actions: torch.Tensor     # [N, *action_shape]
    log_probs: torch.Tensor   # [N]
    values: torch.Tensor      # [N]
    action_masks: torch.Tensor | None = None  # [N, mask_dim]

    @classmethod
    def empty(cls, buffer: RolloutBuffer) -> "OpenMoves":
        """No open moves, shaped like one row of buffer."""
        n = buffer.rewards.shape[1]
        return cls(torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.float64),
                   *(None if getattr(buffer, name) is None else torch.zeros_like(getattr(buffer, name)[0])
                     for name in STEP_FIELDS))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The open moves as tensors (a checkpoint component)."""
        return {name: value for name, value in vars(self).items() if value is not None}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the open moves saved by state_dict()."""
        for name, value in vars(self).items():
            if value is not None:
                value.copy_(state[name])


def own_moves(buffer: RolloutBuffer, acting: np.ndarray, carried: OpenMoves, gamma: float, gae_lambda: float
              ) -> RolloutBuffer:
    """The lanes' moves of a collected [T, N] buffer (next_values filled) as a [M, 1] buffer with advantages
    and returns, M = the moves whose outcome is known; carried is updated in place (open moves in, out).

    acting [T, N] bool marks the rows where a lane moved. Rows of moves are ordered lane by lane, each
    lane's moves in time order (a carried move first).
    """
    rewards = buffer.rewards.cpu().numpy().astype(np.float64)
    terminated, truncated = buffer.terminated.cpu().numpy(), buffer.truncated.cpu().numpy()
    values, next_values = buffer.values.cpu().numpy(), buffer.next_values.cpu().numpy()
    steps, lanes = rewards.shape
    if acting.shape != (steps, lanes):
        raise ValueError(f"acting has shape {acting.shape}, the buffer is {steps} x {lanes}")
    carried_open, carried_reward = carried.open.numpy(), carried.reward.numpy()
    sequences: list[list[tuple[int, float, float, float, bool, bool]]] = []  # (source, r, v, next, term, trunc)
    new_open: list[tuple[int, int, float]] = []  # (lane, row, reward so far)
    zero = np.zeros(1)
    for n in range(lanes):
        moves = np.flatnonzero(acting[:, n])
        sums = np.concatenate([zero, np.cumsum(rewards[:, n])])
        ends_at = np.concatenate([zero, np.cumsum(terminated[:, n] | truncated[:, n])])
        bounds = [(-1, 0, moves[0] if moves.size else steps)] if carried_open[n] else []
        bounds += [(int(t), int(t), int(moves[k + 1]) if k + 1 < moves.size else steps) for k, t in enumerate(moves)]
        lane_rows = []
        for i, (row, start, stop) in enumerate(bounds):
            reward = sums[stop] - sums[start] + (carried_reward[n] if row < 0 else 0.0)
            value = float(carried.values[n]) if row < 0 else float(values[row, n])
            source = steps * lanes + n if row < 0 else row * lanes + n
            if ends_at[stop] > ends_at[start]:  # the move's agent left the game in its span: which way?
                t = start + int(np.flatnonzero(terminated[start:stop, n] | truncated[start:stop, n])[0])
                if terminated[t, n]:
                    lane_rows.append((source, reward, value, 0.0, True, False))
                else:
                    lane_rows.append((source, reward, value, float(next_values[t, n]), False, True))
            elif stop < steps:  # the lane moved again: that move is this one's successor
                lane_rows.append((source, reward, value, float(values[stop, n]), False, False))
            elif row < 0:  # a carried move still open: it stays carried
                new_open.append((n, -1, reward))
            else:
                new_open.append((n, row, reward))
        sequences.append(lane_rows)
    compact = _advantages(sequences, gamma, gae_lambda)
    out = _gather(buffer, carried, [s for rows in sequences for s in (r[0] for r in rows)], compact)
    _carry(buffer, carried, new_open)
    return out


def _advantages(sequences, gamma: float, gae_lambda: float) -> dict[str, torch.Tensor]:
    """GAE along each lane's moves (padded into one [M_max, N] call), flattened lane by lane."""
    longest = max((len(rows) for rows in sequences), default=0)
    n = len(sequences)
    grid = {name: torch.zeros(longest, n, dtype=torch.float32) for name in ("rewards", "values", "next_values")}
    term = torch.ones(longest, n, dtype=torch.bool)  # padding ends every chain
    trunc = torch.zeros(longest, n, dtype=torch.bool)
    for j, rows in enumerate(sequences):
        if rows:
            array = torch.tensor([r[1:4] for r in rows], dtype=torch.float32)
            grid["rewards"][:len(rows), j], grid["values"][:len(rows), j] = array[:, 0], array[:, 1]
            grid["next_values"][:len(rows), j] = array[:, 2]
            term[:len(rows), j] = torch.tensor([r[4] for r in rows])
            trunc[:len(rows), j] = torch.tensor([r[5] for r in rows])
    advantages, returns = gae(grid["rewards"], grid["values"], grid["next_values"], term, trunc, gamma, gae_lambda)
    picked = torch.zeros(longest, n, dtype=torch.bool)
    for j, rows in enumerate(sequences):
        picked[:len(rows), j] = True
    # lane by lane: transpose so that a column's rows are contiguous in the flattening
    flat = lambda x: x.t()[picked.t()]  # noqa: E731
    return {"rewards": flat(grid["rewards"]), "values": flat(grid["values"]), "next_values": flat(grid["next_values"]),
            "terminated": flat(term), "truncated": flat(trunc), "advantages": flat(advantages),
            "returns": flat(returns)}


def _gather(buffer: RolloutBuffer, carried: OpenMoves, sources: list[int], compact: dict[str, torch.Tensor]
            ) -> RolloutBuffer:
    """A [M, 1] RolloutBuffer of the moves at sources (row * N + lane, or T * N + lane for a carried move)."""
    index = torch.tensor(sources, dtype=torch.long)
    device = buffer.values.device
    columns = {}
    for name in STEP_FIELDS:
        column = getattr(buffer, name)
        if column is None:
            columns[name] = None
            continue
        pool = torch.cat([column.flatten(0, 1), getattr(carried, name).to(column.device)])
        columns[name] = pool[index.to(column.device)].unsqueeze(1)
    rows = {key: value.to(device).unsqueeze(1) for key, value in compact.items()}
    return RolloutBuffer(obs=columns["obs"], actions=columns["actions"], log_probs=columns["log_probs"],
        values=rows["values"], rewards=rows["rewards"],
        terminated=rows["terminated"], truncated=rows["truncated"], next_values=rows["next_values"],
        advantages=rows["advantages"], returns=rows["returns"], action_masks=columns["action_masks"])


def _carry(buffer: RolloutBuffer, carried: OpenMoves, new_open: list[tuple[int, int, float]]) -> None:
    """Replace the carried moves with the ones still open at this rollout's end."""
    still = {n for n, row, _ in new_open if row < 0}
    carried.open.zero_()
    for n, row, reward in new_open:
        carried.open[n] = True
        carried.reward[n] = reward
        if row >= 0 or n not in still:
            for name in STEP_FIELDS:
                column = getattr(buffer, name)
                if column is not None:
                    getattr(carried, name)[n] = column[row, n].to(getattr(carried, name).device)
