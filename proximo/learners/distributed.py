"""Where World and its helpers lived before they got a module of their own (proximo/distributed.py):
the same names, for code that still imports them from here."""
from proximo.distributed import (  # noqa: F401 - re-exported
    DEFAULT_TIMEOUT_S, PEER_LOST_EXIT, RANK_SEED_STRIDE, TIMEOUT_ENV, DistributedError, EchoedError, LocalWorld,
    World, broadcast_module_, broadcast_optimizer_, broadcast_parameters_, check_divides, init_world,
    launch_local, launched_by_torchrun, rank_seed, timeout_s,
)
