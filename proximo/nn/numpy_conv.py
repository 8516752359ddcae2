"""The one kernel for a small conv torso (MinAtar's): im2col by row gathers, one GEMM each way.

Why not autograd: on MinAtar's 10x10 frames a torch update spends much of its time outside the
arithmetic (graph, module calls, small-op dispatch), and rollouts act on batches of 8 frames where
that overhead is most of a step. At a [256, 4, 10, 10] minibatch the conv itself is a modest win
(thread CPU time, best of 60, one thread, this machine's Xeon: forward with the /255 0.66 ms here
against 0.78 ms for torch.conv2d + relu; weight and bias gradients 0.76 ms against 1.03 ms for
torch's convolution_backward); the gain of the whole path is in proximo/learners/numpy_cnn.py and
ConvRolloutActor (proximo/nn/policy.py), which run it with the NumPy MLP kernel above it.

Layout: everything is feature-major ("columns are samples"). Frames [B, C, H, W] become
x^T [C*H*W, B]; im2col is then a gather of whole rows of x^T (each row a contiguous run of B
values, the fastest copy NumPy has), giving patches [C*k*k, P*B] with P = oh*ow output positions;
the convolution is weight [O, C*k*k] @ patches -> [O, P*B], which read as [O*P, B] is already the
transpose of torch's Flatten() of [B, O, oh, ow] (index o*P + p). The dense layers then take the
features as the [B, O*P] transposed view (BLAS reads it without a copy), and the weight gradient
lands in torch's [O, C, k, k] order. Stride 1, no padding, one conv + ReLU: what MinAtarCNN holds
(proximo/nn/encoders.py); the division by 255 happens here as in its forward.
"""
from __future__ import annotations

import numpy as np
import torch

from proximo.nn.numpy_mlp import activation_backward_


def patch_rows(channels: int, height: int, width: int, kernel: int) -> np.ndarray:
    """Rows of x^T [C*H*W, B] that im2col gathers, int64 [C*k*k*oh*ow], ordered (c, kh, kw, i, j) so the
    gathered [C*k*k, oh*ow*B] matches weight.reshape(O, C*k*k) (torch's [O, C, kh, kw] order)."""
    oh, ow = height - kernel + 1, width - kernel + 1
    c, kh, kw, i, j = np.meshgrid(np.arange(channels), np.arange(kernel), np.arange(kernel), np.arange(oh),
                                  np.arange(ow), indexing="ij")
    return (c * (height * width) + (i + kh) * width + (j + kw)).ravel()


def frames_columns(frames: np.ndarray) -> np.ndarray:
    """uint8 frames [B, C, H, W] -> float32 x^T [C*H*W, B], divided by 255 as MinAtarCNN.forward does."""
    batch = frames.shape[0]
    columns = np.empty((frames[0].size, batch), dtype=np.float32)
    # x / 255 in float32 (not x * (1/255)): the same values torch's frames.float() / 255 gives.
    np.divide(frames.reshape(batch, -1).T, np.float32(255.0), out=columns, dtype=np.float32)
    return columns


def conv_forward(columns: np.ndarray, rows: np.ndarray, weight: np.ndarray, bias: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """ReLU(conv(x)) of x^T [C*H*W, B] with weight [O, C, k, k], bias [O] and patch_rows() `rows`:
    (patches [C*k*k, P*B], features^T [O*P, B] in torch's Flatten order); the patches feed the backward."""
    batch = columns.shape[1]
    out_channels = weight.shape[0]
    patches = columns.take(rows, axis=0).reshape(weight[0].size, -1)
    # torch's addmm and relu_ on zero-copy views (no autograd): at [16, 36] @ [36, 16384] ~0.3 ms against
    # ~0.6 ms for NumPy's matmul, bias add and maximum (thread CPU time, best of 60, this machine).
    out = torch.addmm(torch.from_numpy(bias)[:, None], torch.from_numpy(weight.reshape(out_channels, -1)),
                      torch.from_numpy(patches)).relu_()
    return patches, out.numpy().reshape(-1, batch)


def conv_backward(patches: np.ndarray, features_t: np.ndarray, grad_features_t: np.ndarray,
                  grad_weight: np.ndarray, grad_bias: np.ndarray) -> None:
    """Write d(loss)/d(weight [O, C, k, k], bias [O]) into grad_weight / grad_bias, given the forward's
    patches and features^T [O*P, B] and d(loss)/d(features^T) [O*P, B] (C-contiguous; changed in place).
    The frames are data, so no input gradient is formed."""
    out_channels = grad_weight.shape[0]
    grad = activation_backward_(grad_features_t, features_t, "relu").reshape(out_channels, -1)
    # patches @ grad^T, then transposed into place: ~0.4 ms against ~0.6 ms for grad @ patches^T, whose
    # long inner dimension (P*B) OpenBLAS handles worse.
    grad_weight.reshape(out_channels, -1)[...] = (patches @ grad.T).T
    # Row sums as grad @ ones: one BLAS call, as numpy_mlp's bias gradients.
    np.matmul(grad, np.ones(grad.shape[1], dtype=grad.dtype), out=grad_bias)
