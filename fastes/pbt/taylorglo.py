"""TaylorGLO: a classification loss parameterised as a third-order Taylor polynomial.

Gonzalez & Miikkulainen, "Optimizing Loss Functions Through Multivariate Taylor Polynomial
Parameterization" (https://arxiv.org/abs/2002.00059); evolved with PBT in Liang et al.
(https://arxiv.org/abs/2002.04225).

Derivation. A loss over n classes is −(1/n) Σ_c f(x_c, y_c), with x the one-hot label and y the
softmax prediction. Expand f to third order around a centre (a, b) = (θ0, θ1):

    f ≈ f(a,b) + f_x·dx + f_y·dy + ½f_xx·dx² + f_xy·dx·dy + ½f_yy·dy²
        + ⅙f_xxx·dx³ + ½f_xxy·dx²·dy + ½f_xyy·dx·dy² + ⅙f_yyy·dy³      (dx = x − a, dy = y − b)

Terms without dy do not change the gradient with respect to the prediction, so training cannot
see them: drop them, and name the six remaining derivatives θ2..θ7:

    f(x, y) = θ2·dy + ½θ3·dy² + ⅙θ4·dy³ + θ5·dx·dy + ½θ6·dx·dy² + ½θ7·dx²·dy

Eight coefficients in all. :func:`cross_entropy_coefficients` gives the expansion of x·log y
(cross-entropy's per-class term), a natural starting point: its gradient equals cross-entropy's
wherever y = b.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validate import real
from .space import Float

__all__ = ["taylorglo_loss", "taylorglo_space", "cross_entropy_coefficients", "NAMES"]

NAMES = tuple(f"theta{i}" for i in range(8))


def cross_entropy_coefficients(a: float = 0.0, b: float = 0.5) -> tuple[float, ...]:
    """θ for the third-order expansion of g(x, y) = x·log y at (a, b):
    g_y = a/b, g_yy = −a/b², g_yyy = 2a/b³, g_xy = 1/b, g_xyy = −1/b², g_xxy = 0."""
    a = real(a, "a", low=-1e30)
    b = real(b, "b", positive=True)
    return (a, b, a / b, -a / b**2, 2 * a / b**3, 1 / b, -1 / b**2, 0.0)


def taylorglo_space(bound: float = 10.0, center: tuple[float, float] = (0.0, 0.5)) -> dict:
    """The eight coefficients as PBT dimensions in [−bound, bound] (the centre's in [0, 1]),
    defaulting to :func:`cross_entropy_coefficients` at ``center``."""
    bound = real(bound, "bound", positive=True)
    theta = cross_entropy_coefficients(*center)
    dims = {}
    for i, (name, default) in enumerate(zip(NAMES, theta, strict=True)):
        low, high = (0.0, 1.0) if i < 2 else (-bound, bound)
        if not low <= default <= high:
            raise ValueError(f"center {center} puts {name} = {default:g} outside [{low}, {high}]")
        dims[name] = Float(low, high, default=default)
    return dims


def taylorglo_loss(outputs: torch.Tensor, targets: torch.Tensor, theta) -> torch.Tensor:
    """The TaylorGLO loss of logits ``outputs`` (B, n) for integer ``targets`` (B,), averaged
    over the batch. ``theta`` is a dict with ``theta0``..``theta7`` (e.g. a PBT member's
    hyperparameters) or a sequence / tensor of the eight values."""
    if isinstance(theta, dict):
        theta = [theta[k] for k in NAMES]
    if len(theta) != 8:
        raise ValueError(f"theta must hold 8 coefficients; got {len(theta)}")
    t0, t1, t2, t3, t4, t5, t6, t7 = theta
    n = outputs.shape[-1]
    y = outputs.softmax(-1)
    x = F.one_hot(targets, n).to(y.dtype)
    dx, dy = x - t0, y - t1
    f = (t2 * dy + t3 / 2 * dy**2 + t4 / 6 * dy**3 + t5 * dx * dy + t6 / 2 * dx * dy**2
         + t7 / 2 * dx**2 * dy)  # fmt: skip
    return -f.sum(-1).mean() / n
