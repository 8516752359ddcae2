"""Which learner backend a run gets: the classic trainer's one choice between a NumPy learner and torch.

Above the backends (each imports the interface in base.py), so the interface imports none of them.
"""
from __future__ import annotations

from proximo.learners.base import Learner
from proximo.learners.numpy_cnn import NumpyCNNLearner
from proximo.learners.numpy_mlp import NumpyMLPLearner
from proximo.learners.optimizer import FlatOptimizer
from proximo.learners.torch import TorchLearner
from proximo.nn.policy import ActorCritic


def learner_class(name: str) -> type[Learner]:
    """The Learner subclass of a backend name: numpy (the MLP learner; frames: NumpyCNNLearner) or torch."""
    classes = {cls.name: cls for cls in (NumpyMLPLearner, TorchLearner)}
    return classes[name]


def choose_learner(policy: ActorCritic, optimizer: FlatOptimizer, requested: str = "auto",
                   world=None) -> tuple[Learner, str]:
    """The backend for a run, once: `requested` (auto | numpy | torch) -> (learner, why it was chosen).

    numpy is the NumPy learner for the policy's observations: NumpyMLPLearner for flat ones,
    NumpyCNNLearner for frames. auto takes it when it supports the policy (the fastest on small CPU
    MLPs and on MinAtar's CNN), else torch. The choice also sets policy.numpy_frames, so a CNN policy's
    rollouts act through NumPy exactly when its update runs there (learner=torch: torch everywhere).
    Raises ValueError with numpy's reason when numpy is requested but declines.
    """
    numpy = NumpyCNNLearner if policy.image else learner_class("numpy")
    torch_learner = learner_class("torch")
    policy.numpy_frames = False
    if requested == "torch":
        return torch_learner(policy, optimizer, world), "torch: requested (learner=torch)"
    declined = numpy.supports(policy, optimizer)
    if declined is None:
        why = "requested (learner=numpy)" if requested == "numpy" else numpy.fits
        policy.numpy_frames = policy.image
        return numpy(policy, optimizer, world), f"numpy: {why}"
    if requested == "numpy":
        raise ValueError(f"learner=numpy cannot train this policy: {declined}; use learner=torch or auto")
    return torch_learner(policy, optimizer, world), f"torch: autograd (numpy declined: {declined})"
