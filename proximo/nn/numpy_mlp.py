"""The one NumPy kernel for Linear + activation stacks: forward, and backward into given grad arrays.

Why NumPy: on CartPole-sized networks (64x64, batches of 8-256) torch's per-op cost, not the
arithmetic, dominates. A [256, 64] x [64, 64] matmul takes ~10 us in NumPy and ~21 us in torch on
this CPU, an elementwise op ~1 us against ~6 us. The rollout actor (proximo/nn/policy.py,
RolloutActor) and the NumPy learner (proximo/learners/numpy_mlp.py) both run their networks here.
Weights are [out, in] as in torch.nn.Linear, so NumPy views of torch parameters work unchanged.
Every function also takes a leading agent axis K (x [K, B, in], weights [K, out, in], biases
[K, 1, out]): K independent networks of one shape in one call each (proximo/population.py), each
agent's matrices going through the same BLAS call a single network's would.
"""
from __future__ import annotations

import numpy as np

# Activations this kernel runs, by their configured name (PPOConfig.activation).
NUMPY_ACTIVATIONS = ("tanh", "relu")


def activate_(z: np.ndarray, activation: str) -> np.ndarray:
    """The activation applied in place to z; returns z."""
    if activation == "relu":
        return np.maximum(z, 0.0, out=z)
    return np.tanh(z, out=z)


def activation_backward_(grad: np.ndarray, output: np.ndarray, activation: str) -> np.ndarray:
    """grad times the activation's derivative, written in terms of its output; in place, returns grad."""
    if activation == "relu":
        grad *= output > 0
    else:
        derivative = np.square(output)
        np.subtract(1.0, derivative, out=derivative)  # 1 - y^2 in one buffer: the same values, one allocation
        grad *= derivative
    return grad


def _t(matrix: np.ndarray) -> np.ndarray:
    """The transpose of the last two axes (a view): .T for one matrix, per agent for a stack."""
    return np.swapaxes(matrix, -1, -2)


def _ones(x: np.ndarray) -> np.ndarray:
    """The row of ones whose product with a gradient [..., B, W] sums it over B into a bias's shape."""
    return np.ones(x.shape[-2] if x.ndim == 2 else (1, x.shape[-2]), dtype=x.dtype)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x [B, in] @ weight[out, in].T + bias [out] -> [B, out] (or per agent: [K, B, in], [K, out, in], [K, 1, out])."""
    if x.ndim == 2 and not x.flags.c_contiguous and x.flags.f_contiguous:
        # x is the transpose of a feature-major [in, B] (a conv torso's output, proximo/nn/numpy_conv.py):
        # OpenBLAS runs weight @ x^T faster than x @ weight^T with both operands transposed at small B
        # (48 against 80 us of thread CPU time for 1024 -> 128 at B = 8, best of 40), and the result, a
        # transposed view again, keeps the layout; the bias goes onto the contiguous [out, B] product.
        z_t = weight @ _t(x)
        z_t += bias[:, None]
        return _t(z_t)
    z = x @ _t(weight)
    z += bias
    return z


def mlp_forward(weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray,
                activation: str) -> list[np.ndarray]:
    """Outputs of every layer of an activated Linear stack for x [B, in] (the last one is the result)."""
    hidden = []
    for weight, bias in zip(weights, biases):
        x = activate_(linear(x, weight, bias), activation)
        hidden.append(x)
    return hidden


def mlp_backward(weights: list[np.ndarray], grad_weights: list[np.ndarray], grad_biases: list[np.ndarray],
                 x: np.ndarray, hidden: list[np.ndarray], grad_top: np.ndarray, activation: str,
                 input_grad: bool = False) -> np.ndarray | None:
    """Write d(loss)/d(weights, biases) of the stack into grad_weights / grad_biases, given
    d(loss)/d(output of the last layer) grad_top [B, W] (changed in place). With input_grad, also return
    d(loss)/d(x) [B, in] as the transposed view of a C-contiguous [in, B] (a conv torso below reads it
    column-major, proximo/nn/numpy_conv.py); without, the input gradient is not formed."""
    # Column sums as ones @ grad: one BLAS call, ~1 us against ~4 us for sum(axis=0) here.
    ones = _ones(x)
    grad = grad_top
    for k in range(len(weights) - 1, -1, -1):
        activation_backward_(grad, hidden[k], activation)
        np.matmul(_t(grad), hidden[k - 1] if k else x, out=grad_weights[k])
        np.matmul(ones, grad, out=grad_biases[k])
        if k:
            grad = grad @ weights[k]
    return _t(_t(weights[0]) @ _t(grad)) if input_grad else None


def head_backward(weight: np.ndarray, grad_weight: np.ndarray, grad_bias: np.ndarray, features: np.ndarray,
                  grad_out: np.ndarray) -> np.ndarray:
    """Gradients of an output Linear layer (no activation) into grad_weight/grad_bias; returns the
    gradient with respect to its input features [B, in]."""
    np.matmul(_t(grad_out), features, out=grad_weight)
    np.matmul(_ones(features), grad_out, out=grad_bias)
    # A one-column grad_out (the value head) makes the matmul an outer product, which BLAS does
    # ~3x slower than broadcasting.
    return grad_out * weight if grad_out.shape[-1] == 1 else grad_out @ weight
