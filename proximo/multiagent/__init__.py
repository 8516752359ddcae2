"""Many agents in one world: PettingZoo envs, shared policies with IPPO or MAPPO critics, self-play leagues.

proximo/multiagent/envs.py      PettingZoo envs by id or factory; how agents become lanes (observations, masks)
proximo/multiagent/vector.py    copies of a PettingZoo env as one gymnasium vector env of learning agents
proximo/multiagent/credit.py    each agent's own moves out of a rollout (turn-based rewards, idle steps)
proximo/multiagent/league.py    self-play: snapshots, opponent sampling, ratings
proximo/multiagent/play.py      whole games with policy / random / look-ahead players; match results
proximo/multiagent/trainer.py   the Trainer for these envs
"""
from __future__ import annotations

from typing import Any


def trainer_class(env: Any, env_kwargs: dict | None = None) -> type:
    """The Trainer class for env: MultiAgentTrainer for a PettingZoo id or factory, else proximo.train.Trainer."""
    # Imported here: every run (api, cli, populations) asks this package face which trainer to build, and only the
    # chosen trainer (with its envs) should load.
    from proximo.multiagent.envs import is_multiagent_env

    if is_multiagent_env(env, env_kwargs):
        from proximo.multiagent.trainer import MultiAgentTrainer
        return MultiAgentTrainer
    from proximo.train import Trainer
    return Trainer
