"""One explicit Runge-Kutta step, shared by the fixed-grid schemes, dopri5 and the
replays of exact decoder gradients (`gfe.gradients`).

Stages are combined by element-wise products and sums only (no matrix product,
no fused multiply-add), so each sample's step is rounded the same way in any batch.
"""

from __future__ import annotations

import torch


def runge_kutta_stages(rhs, t, y, h, tableau, k1=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`(y + h Σ b_i k_i, [k_1, ..., k_s])` with stages `k_i = rhs(t + c_i h, y + h Σ_j A_ij k_j)`,
    per sample (`t`, `h` of shape (B,)); `tableau` is `(A, b, c)`; `k1`, if given, is the
    first stage already evaluated."""
    a, b, c = tableau
    h_ = h.to(y.dtype)[:, None]
    k = [rhs(t, y) if k1 is None else k1]
    for i in range(1, len(b)):
        k.append(rhs(t + c[i] * h, y + h_ * combine(a[i][:i], k)))
    return y + h_ * combine(b, k), k


def runge_kutta_step(rhs, t, y, h, tableau, k1=None) -> torch.Tensor:
    """The new state of `runge_kutta_stages`."""
    return runge_kutta_stages(rhs, t, y, h, tableau, k1)[0]


def combine(weights, stages: list[torch.Tensor]) -> torch.Tensor:
    """`Σ w_j k_j` over the nonzero weights, in stage order."""
    return sum(w * k for w, k in zip(weights, stages) if w)
