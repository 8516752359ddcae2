"""proximo: Proximal Policy Optimization for gymnasium envs and language models."""
from proximo.api import PPO
from proximo.config import PPOConfig, make_config
from proximo.errors import ProximoError
from proximo.version import __version__

__all__ = ["PPO", "PPOConfig", "make_config", "ProximoError", "__version__"]
