"""Pixel games: the Atari (ALE) pipeline of the PPO paper's era and MinAtar's small games.

An ALE id becomes, from the inside out (gymnasium's and ale-py's own wrappers where they do the job):

    gym.make(id, frameskip=1, repeat_action_probability=sticky)   ale-py, sticky actions off by default
    AtariPreprocessing(noop_max=30, frame_skip=4, screen_size=84)  no-op reset, skip 4 with a max over the
                                                                  last two frames, 84x84 grey, uint8
    RecordEpisodeStatistics(stats_key="game")                     true score and length of the whole game
    EpisodicLife                       (training only)             a lost life ends the training episode
    FireReset                                                     FIRE after a reset (and, when episodes
                                                                  are whole games, after a lost life)
    TransformReward(np.sign)           (training only)             rewards clipped to -1, 0, +1
    FrameStackObservation(4)                                      [4, 84, 84] uint8

The score wrapper sits below the episodic-life and reward-clipping layers, so info["game"] carries
the game's true score and is only written when the game itself ends; the collector logs those
(proximo.rollout, GAME_KEY) instead of the training episodes' clipped sums.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import (
    AtariPreprocessing, FrameStackObservation, RecordEpisodeStatistics, TimeLimit, TransformReward,
)

from proximo.errors import ProximoError
from proximo.extras import install_hint, need

GAME_KEY = "game"                    # info key of a finished game's true statistics {"r", "l", "t"}
GAME_SCORES = "proximo_game_scores"  # metadata flag: episodes end on lost lives, whole games report GAME_KEY
ATARI_HZ = 60                        # the NTSC 2600's frame rate
MINATAR_MAX_STEPS = 10_000           # MinAtar registers no time limit; a policy that never loses must stop too


@dataclass(frozen=True)
class PixelOptions:
    """How an ALE id (or a MinAtar one: minatar_obs) is wrapped; the training-only parts (episodic life, sign
    rewards) are off for evaluation."""

    frame_stack: int = 4
    frame_skip: int = 4
    noop_max: int = 30
    screen_size: int = 84
    sticky_actions: float = 0.0      # ALE's repeat_action_probability (v5's own default is 0.25)
    episodic_life: bool = False
    sign_rewards: bool = False
    minatar_obs: str = "frames"      # MinAtar ids: uint8 frames, or the flat 0/1 cells ("flat", for an MLP)

    def for_evaluation(self) -> "PixelOptions":
        """The same pipeline with whole games and true rewards."""
        return dataclasses.replace(self, episodic_life=False, sign_rewards=False)


def pixel_options(config: Any, training: bool = True) -> PixelOptions:
    """The PixelOptions a PPOConfig asks for (for evaluation when training is False)."""
    options = PixelOptions(frame_stack=config.frame_stack, frame_skip=config.frame_skip,
                           noop_max=config.noop_max, screen_size=config.screen_size,
                           sticky_actions=config.sticky_actions, episodic_life=config.episodic_life,
                           sign_rewards=config.sign_rewards, minatar_obs=config.minatar_obs)
    return options if training else options.for_evaluation()


def is_atari_id(env_id: Any) -> bool:
    """True for ale-py's gymnasium ids (ALE/Pong-v5, ...)."""
    return isinstance(env_id, str) and env_id.startswith("ALE/")


def is_minatar_id(env_id: Any) -> bool:
    """True for MinAtar's gymnasium ids (MinAtar/Breakout-v1, ...)."""
    return isinstance(env_id, str) and env_id.startswith("MinAtar/")


def register_pixel_family(env_id: str) -> None:
    """Register ale-py's or MinAtar's ids with gymnasium; a missing package is one line naming the extra."""
    if is_atari_id(env_id):
        try:
            import ale_py
        except ImportError as exc:
            raise ProximoError(f"{env_id} needs {install_hint('ale_py')}") from exc
        need("cv2", f"{env_id}'s frame pipeline")  # AtariPreprocessing resizes with OpenCV
        gym.register_envs(ale_py)
    elif is_minatar_id(env_id) and env_id not in gym.registry:
        try:
            import minatar.gym
        except ImportError as exc:
            raise ProximoError(f"{env_id} needs {install_hint('minatar')}") from exc
        minatar.gym.register_envs()


# wrappers ------------------------------------------------------------------------------------------
class EpisodicLife(gym.Wrapper):
    """A lost life ends the training episode; the reset that follows continues the same game.

    Only a real game over (or the game's time limit) resets the emulator. The value target thus
    sees a life as the end of everything, as the DQN and PPO papers trained; the score wrapper
    underneath keeps counting the whole game.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def step(self, action):
        """The inner step, with terminated=True also when a life was lost."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = bool(terminated or truncated)
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed=None, options=None):
        """A real reset after a game over (or when seeded); after a lost life one no-op step instead."""
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:  # the no-op itself ended the game
                obs, info = self.env.reset(options=options)
        self.game_over = False
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info

    def proximo_state(self) -> dict[str, Any]:
        """The counters a snapshot must keep (proximo.envs.snapshot)."""
        return {"lives": int(self.lives), "game_over": bool(self.game_over)}

    def proximo_set_state(self, state: dict[str, Any]) -> None:
        """Restore proximo_state()'s output."""
        self.lives, self.game_over = int(state["lives"]), bool(state["game_over"])


class FireReset(gym.Wrapper):
    """Press FIRE (then the next action, as baselines does) after a reset in games that wait for it.

    With fire_on_life_loss the same happens inside step() after a lost life: for evaluation, where
    an episode is the whole game, so that a deterministic policy that never learned to serve (it
    never had to: in training the reset after a lost life served for it) does not stall until the
    time limit.
    """

    def __init__(self, env: gym.Env, fire_on_life_loss: bool = False) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        if len(meanings) < 3 or meanings[1] != "FIRE":
            raise ProximoError(f"FireReset needs FIRE as action 1; this game's actions are {meanings}")
        self.fire_on_life_loss = fire_on_life_loss
        self.lives = 0

    def _serve(self, obs, info):
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                return self.env.reset()
        return obs, info

    def reset(self, *, seed=None, options=None):
        """The inner reset, then FIRE and action 2."""
        obs, info = self._serve(*self.env.reset(seed=seed, options=options))
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info

    def step(self, action):
        """The inner step; with fire_on_life_loss, FIRE after a life is lost (rewards of those steps added)."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.env.unwrapped.ale.lives()
        if self.fire_on_life_loss and 0 < lives < self.lives and not (terminated or truncated):
            for serve in (1, 2):
                obs, more, terminated, truncated, info = self.env.step(serve)
                reward += more
                if terminated or truncated:
                    break
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def proximo_state(self) -> dict[str, Any]:
        """The life counter a snapshot must keep."""
        return {"lives": int(self.lives)}

    def proximo_set_state(self, state: dict[str, Any]) -> None:
        """Restore proximo_state()'s output."""
        self.lives = int(state["lives"])


def _sign(reward):
    """The sign of a reward as a float (a named function, so async workers can pickle the wrapper)."""
    return float(np.sign(reward))


def make_atari(env_id: str, options: PixelOptions | None = None, render_mode: str | None = None,
               **kwargs: Any) -> gym.Env:
    """An ALE id through the full pipeline of the module docstring; env kwargs go to gym.make."""
    options = options if options is not None else PixelOptions()
    _check_options(options)
    kwargs = {"repeat_action_probability": options.sticky_actions, **kwargs}
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    env = gym.make(env_id, frameskip=1, **kwargs)
    env = AtariPreprocessing(env, noop_max=options.noop_max, frame_skip=options.frame_skip,
                             screen_size=options.screen_size, terminal_on_life_loss=False)
    env = RecordEpisodeStatistics(env, stats_key=GAME_KEY)
    if options.episodic_life:
        env = EpisodicLife(env)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env, fire_on_life_loss=not options.episodic_life)
    if options.sign_rewards:
        env = TransformReward(env, _sign)
    env = FrameStackObservation(env, options.frame_stack)
    # One agent step shows every frame_skip-th frame of the console's 60 Hz (ale-py's metadata says 30,
    # its human-window rate), so a video at 60 / frame_skip frames/s plays in real time.
    env.metadata = {**env.metadata, GAME_SCORES: True, "render_fps": max(1, round(ATARI_HZ / options.frame_skip))}
    return env


def _check_options(options: PixelOptions) -> None:
    for name in ("frame_stack", "frame_skip", "screen_size"):
        if getattr(options, name) < 1:
            raise ProximoError(f"{name} must be at least 1, got {getattr(options, name)}")
    if options.noop_max < 0:
        raise ProximoError(f"noop_max must not be negative, got {options.noop_max}")
    if not 0.0 <= options.sticky_actions < 1.0:
        raise ProximoError(f"sticky_actions must lie in [0, 1), got {options.sticky_actions} (v5's value is 0.25)")


class MinAtarFrames(gym.ObservationWrapper):
    """MinAtar's bool [10, 10, C] state as uint8 frames of 0 and 255, so every image torso reads x / 255."""

    proximo_stateless_wrapper = True

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Box(0, 255, env.observation_space.shape, np.uint8)

    def observation(self, observation):
        """bool -> uint8 {0, 255}."""
        return np.asarray(observation, dtype=np.uint8) * np.uint8(255)


class MinAtarFlat(gym.ObservationWrapper):
    """MinAtar's bool [10, 10, C] state as one bool vector [10 * 10 * C] (row-major, as gymnax-blines' MLP
    flattens it): a flat Box, so the policy is an MLP that reads the cells as 0/1."""

    proximo_stateless_wrapper = True

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = spaces.Box(0, 1, (int(np.prod(env.observation_space.shape)),), bool)

    def observation(self, observation):
        """[10, 10, C] -> [10 * 10 * C]."""
        return np.asarray(observation, dtype=bool).reshape(-1)


def make_minatar(env_id: str, render_mode: str | None = None, obs: str = "frames", **kwargs: Any) -> gym.Env:
    """A MinAtar id as uint8 frames (obs "frames") or flat 0/1 cells (obs "flat"), with a time limit of
    MINATAR_MAX_STEPS unless kwargs set max_episode_steps; other kwargs go to MinAtar (sticky_action_prob...)."""
    max_steps = kwargs.pop("max_episode_steps", MINATAR_MAX_STEPS)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    env = gym.make(env_id, **kwargs)
    if max_steps:
        env = TimeLimit(env, max_steps)
    return MinAtarFlat(env) if obs == "flat" else MinAtarFrames(env)
