"""Tiny PettingZoo envs for tests, each with outcomes a test can compute by hand."""
import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv


class RelayAEC(AECEnv):
    """Two agents, a then b, four moves a game. a's move k gives b a reward of k + 1; b's move k gives a
    10 (k + 1), which arrives on b's turn. The fourth move ends the game: a +100, b -100. Action 2 is
    illegal on the first two moves (the mask says so; an illegal move raises)."""

    metadata = {"render_modes": [], "name": "relay_v0"}

    def __init__(self) -> None:
        super().__init__()
        self.possible_agents = ["a", "b"]
        self._obs_space = spaces.Dict({"observation": spaces.Box(-100, 100, (2,), np.float32),
                                       "action_mask": spaces.Box(0, 1, (3,), np.int8)})

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return spaces.Discrete(3)

    def _mask(self):
        return np.array([1, 1, 0 if self.moves < 2 else 1], dtype=np.int8)

    def observe(self, agent):
        return {"observation": np.array([self.moves, self.last_action], dtype=np.float32), "action_mask": self._mask()}

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos = {a: {} for a in self.agents}
        self.moves, self.last_action = 0, -1
        self.agent_selection = "a"

    def step(self, action):
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        if not self._mask()[action]:
            raise ValueError(f"illegal move {action} at move {self.moves}")
        self._cumulative_rewards[agent] = 0.0
        self.rewards = {a: 0.0 for a in self.agents}
        if agent == "a":
            self.rewards["b"] = action + 1.0
        else:
            self.rewards["a"] = 10.0 * (action + 1)
        self.moves += 1
        self.last_action = action
        if self.moves == 4:
            self.rewards["a"] += 100.0
            self.rewards["b"] -= 100.0
            self.terminations = {a: True for a in self.agents}
        self.agent_selection = "b" if agent == "a" else "a"
        self._accumulate_rewards()


class LeaversParallel(ParallelEnv):
    """Two agents with different action counts (p: 3, q: 5) and masks; each gets reward 1 a step; q
    leaves (terminates) after 2 steps, p after 5, which ends the episode. An illegal action raises."""

    metadata = {"render_modes": [], "name": "leavers_v0"}

    def __init__(self) -> None:
        self.possible_agents = ["p", "q"]
        self._n = {"p": 3, "q": 5}

    def observation_space(self, agent):
        return spaces.Dict({"observation": spaces.Box(-10, 10, (2,), np.float32),
                            "action_mask": spaces.Box(0, 1, (self._n[agent],), np.int8)})

    def action_space(self, agent):
        return spaces.Discrete(self._n[agent])

    def _obs(self, agent):
        mask = np.ones(self._n[agent], dtype=np.int8)
        mask[self.t % self._n[agent]] = 0  # one action illegal, a different one each step
        return {"observation": np.array([self.t, 1.0 if agent == "p" else -1.0], dtype=np.float32),
                "action_mask": mask}

    def reset(self, seed=None, options=None):
        self.agents = list(self.possible_agents)
        self.t = 0
        return {a: self._obs(a) for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        for agent, action in actions.items():
            if not self._obs(agent)["action_mask"][action]:
                raise ValueError(f"illegal action {action} of {agent} at step {self.t}")
        self.t += 1
        ends = {"p": 5, "q": 2}
        rewards = {a: 1.0 for a in self.agents}
        terminations = {a: self.t >= ends[a] for a in self.agents}
        truncations = {a: False for a in self.agents}
        observations = {a: self._obs(a) for a in self.agents}
        infos = {a: {} for a in self.agents}
        self.agents = [a for a in self.agents if not terminations[a]]
        return observations, rewards, terminations, truncations, infos
