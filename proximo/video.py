"""Recording evaluation episodes as mp4 files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from proximo.envs.make import EnvLike, make_single_env
from proximo.errors import ProximoError
from proximo.extras import install_hint
from proximo.evaluate import EpisodeActor
from proximo.nn.policy import ActorCritic


def record_episodes(policy: ActorCritic, env: EnvLike, out_dir: Path, episodes: int = 1, seed: int = 0,
                    deterministic: bool = True, env_kwargs: dict | None = None, fps: int | None = None,
                    action_masking: str = "auto") -> list[tuple[Path, float]]:
    """Play `episodes` episodes with rgb_array rendering and write out_dir/episode-NNN.mp4; returns (path, return)."""
    # MuJoCo renders headless through EGL on these machines; osmesa and glfw do not work without a display.
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import imageio.v2 as imageio
    except ImportError as exc:
        raise ProximoError(f"recording videos needs {install_hint('imageio')}") from exc
    try:
        single = make_single_env(env, render_mode="rgb_array", **(env_kwargs or {}))
    except ProximoError as exc:
        raise ProximoError(f"{exc} (this env may not support render_mode='rgb_array')") from exc
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rate = fps or int(single.metadata.get("render_fps", 30))
    written = []
    try:
        actor = EpisodeActor(policy, single, action_masking, deterministic)
        for episode in range(episodes):
            obs, info = single.reset(seed=seed + episode)
            actor.begin_episode()
            path = out_dir / f"episode-{episode:03d}.mp4"
            total, done = 0.0, False
            with imageio.get_writer(path, fps=rate, macro_block_size=1) as writer:
                writer.append_data(_frame(single))
                while not done:
                    obs, reward, terminated, truncated, info = single.step(actor(obs, info))
                    total += float(reward)
                    done = terminated or truncated
                    writer.append_data(_frame(single))
            written.append((path, total))
    except Exception as exc:
        if isinstance(exc, ProximoError):
            raise
        if type(exc).__name__ == "DependencyNotInstalled":
            hint = install_hint("pygame") if "pygame" in str(exc) else str(exc)
            raise ProximoError(f"rendering this env needs {hint}") from exc
        raise
    finally:
        single.close()
    return written


def _frame(env) -> np.ndarray:
    frame = env.render()
    if frame is None:
        raise ProximoError("the env returned no frame from render(); it does not support rgb_array rendering")
    return np.asarray(frame, dtype=np.uint8)
