"""Actor-critic networks, observation encoders and action distributions."""
from proximo.nn.distributions import make_action_head
from proximo.nn.normalize import RunningMeanStd
from proximo.nn.policy import ActorCritic

__all__ = ["ActorCritic", "RunningMeanStd", "make_action_head"]
