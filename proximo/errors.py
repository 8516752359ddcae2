"""The one exception type proximo raises for mistakes a user can fix."""


class ProximoError(Exception):
    """A user-facing error: its message names the bad value and how to fix it."""


class ConfigError(ProximoError, ValueError):
    """A config value is of the wrong type, out of range or inconsistent with another."""


class DistributedError(ProximoError):
    """The process group could not start, or a collective failed because another rank died or hung."""


class NonFiniteError(ProximoError):
    """An observation, reward or loss became NaN or infinite."""


class ActionMaskError(ProximoError):
    """An env's action mask is missing, of the wrong shape, or allows no action."""


class GenerationProcessError(ProximoError):
    """The generator process of asynchronous generation failed, died, or answered nothing within its timeout."""


class EchoedError(ProximoError):
    """Rank 0's error, raised on the other ranks too so that they stop with it; rank 0 alone prints it."""


PEER_LOST_EXIT = 3  # exit status of a process that stopped because another process of its run failed
