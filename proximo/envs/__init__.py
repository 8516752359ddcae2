"""Making gymnasium vector envs for proximo and checking them."""
from proximo.envs.make import EnvSpec, make_single_env, make_vector_env

__all__ = ["EnvSpec", "make_vector_env", "make_single_env"]
