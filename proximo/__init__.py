"""proximo: Proximal Policy Optimization for gymnasium envs and language models."""
__version__ = "0.1.0"

from proximo.api import PPO  # noqa: E402
from proximo.config import PPOConfig, make_config  # noqa: E402
from proximo.errors import ProximoError  # noqa: E402

__all__ = ["PPO", "PPOConfig", "make_config", "ProximoError", "__version__"]
