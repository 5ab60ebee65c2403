"""Gradient-alignment weightings on the Gramian: Aligned-MTL, ConFIG, GradVac and FairGrad.

Each method's shared update is a linear combination `d = sum_i w_i g_i` of the task gradients,
and each needs only inner products, so it runs on the K x K Gramian `G = J J^T`:

* Aligned-MTL (Senushkin et al., CVPR 2023) takes the eigendecomposition `G = V L V^T` and the
  balance transformation `B = sqrt(s) V L^-1/2 V^T` (on the range of G), whose aligned
  gradients `B J` have the Gramian `B G B = s P_range`;
* ConFIG (Liu et al., ICLR 2025) needs the cosine Gramian `U U^T` of the unit gradients:
  `g_u = U^T (U U^T)^+ 1 = sum_i a_i g_i`, `a_i = ((U U^T)^+ 1)_i / ||g_i||`;
* GradVac (Wang et al., ICLR 2021) tracks each corrected gradient by its coefficients on the
  original ones, `g_i' = c_i^T J`, so `g_i' . g_j = (c_i^T G)_j` and `||g_i'||^2 = c_i^T G c_i`
  (as TorchJD's `GradVacWeighting`);
* FairGrad (Ban & Ji, ICML 2024) solves `G w = w^(-1/alpha)`.

The K x K work runs in float64 on the host; weights are returned in the Gramian's dtype and
device. Every method takes batched Gramians `[..., K, K]`: Aligned-MTL, ConFIG and GradVac are
vectorised over the batch (GradVac loops over its K - 1 correction steps, all tasks at once),
FairGrad runs one vectorised damped Newton iteration for the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from core.errors import InvalidHyperparameterError, MTLInputError, NonFiniteGradientError
from core.methods.base import (
    GradientWeighting,
    HeadGradient,
    WeightsResult,
    check_generator,
    check_integer,
    check_number,
    generator_state,
    load_generator_state,
    weights_in_dtype,
)
from core.methods.dual_cone import check_preference_vector, preference_weights

_EPS = float(np.finfo(np.float64).eps)


def _host_float64(gramian: Tensor, method: str) -> Tensor:
    """The symmetric part of the Gramian in float64 on the host; a non-finite Gramian raises."""
    gram = gramian.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(gram).all()):
        raise NonFiniteGradientError(f"{method}: the Gramian contains NaN or infinite entries")
    return 0.5 * (gram + gram.transpose(-1, -2))


def _cosines(gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The cosine Gramian `G_ij / (||g_i|| ||g_j||)` (clipped to [-1, 1]; the row and column of a
    zero gradient are 0, its diagonal entry too), the norms and the mask of nonzero gradients.
    Divided one factor at a time so that `||g_i|| ||g_j||` cannot underflow."""
    norms = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    nonzero = norms > 0
    safe = torch.where(nonzero, norms, torch.ones_like(norms))
    cosine = gram / safe[..., :, None] / safe[..., None, :]
    cosine = (0.5 * (cosine + cosine.transpose(-1, -2))).clamp(
        -1.0, 1.0
    )  # the divisions round asymmetrically
    both = nonzero[..., :, None] & nonzero[..., None, :]
    cosine = torch.where(both, cosine, torch.zeros_like(cosine))
    eye = torch.eye(gram.shape[-1], dtype=torch.bool)
    cosine = torch.where(eye & both, torch.ones_like(cosine), cosine)
    return cosine, norms, nonzero


def canonical_order(gram: Tensor, /) -> Tensor:
    """A task order `[..., K]` that depends only on the tasks' own entries of the Gramian, not on
    their labels: sorted by `G_ii`, then by the sum and the sum of squares of row i (stable, so
    that ties keep their order; tasks tied on all three have identical rows in practice, and
    swapping identical tasks leaves G unchanged).

    Eigendecompositions and pseudo-inverses round differently for a relabelled matrix; computed in
    this order, relabelling the tasks relabels the weights exactly (`w(P G P^T) = P w(G)`,
    bitwise), whatever the conditioning of G."""
    rows = gram.sort(dim=-1).values  # the row as a multiset: its sums do not depend on the labels
    keys = (rows.pow(2).sum(dim=-1), rows.sum(dim=-1), torch.diagonal(gram, dim1=-2, dim2=-1))
    order = torch.arange(gram.shape[-1]).expand(gram.shape[:-1])
    for key in keys:  # least significant first: successive stable sorts
        order = order.gather(-1, key.gather(-1, order).argsort(dim=-1, stable=True))
    return order


_JACOBI_SWEEPS = 40
"""Cap on the sweeps of `jacobi_eigh` (it converges quadratically: 5-10 sweeps for K <= 10)."""


def jacobi_eigh(matrix: Tensor, /) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of symmetric PSD matrices `[..., K, K]` (float64)
    by the cyclic two-sided Jacobi method, vectorised over the batch.

    A rotation in the plane (p, q) annihilates `a_pq` (Golub & Van Loan, Alg. 8.5.2); a pair is
    rotated while `|a_pq| > eps sqrt(a_pp a_qq)`. With that stopping rule Jacobi is accurate to
    each eigenvalue's own size for graded matrices `G = N U N` (Demmel & Veselic 1992: relative
    error about `eps cond(U)`, not `eps lambda_max / lambda`), which is what a Gramian of task
    gradients of very different norms is; `torch.linalg.eigh` resolves small eigenvalues only to
    `eps lambda_max`. Stops when no pair needs a rotation or after 40 sweeps."""
    eigenvalues, v = _jacobi_eigh_np(matrix.detach().to(device="cpu", dtype=torch.float64).numpy())
    return torch.from_numpy(eigenvalues), torch.from_numpy(v)


def _jacobi_eigh_np(values: np.ndarray, /) -> tuple[np.ndarray, np.ndarray]:
    """`jacobi_eigh` on a numpy array `[..., K, K]` (fresh arrays back)."""
    shape, size = values.shape, values.shape[-1]
    a = values.reshape(-1, size, size).copy()
    v = np.broadcast_to(np.eye(size), a.shape).copy()
    for _ in range(_JACOBI_SWEEPS):
        rotated = False
        for p in range(size - 1):
            for q in range(p + 1, size):
                a_pp, a_qq, a_pq = a[:, p, p], a[:, q, q], a[:, p, q]
                rotate = np.abs(a_pq) > _EPS * np.sqrt(np.abs(a_pp * a_qq))
                if not rotate.any():
                    continue
                rotated = True
                safe = np.where(rotate, a_pq, 1.0)
                zeta = (a_qq - a_pp) / (2.0 * safe)
                t = np.where(zeta >= 0, 1.0, -1.0) / (np.abs(zeta) + np.sqrt(1.0 + zeta * zeta))
                t = np.where(rotate, t, 0.0)
                c = 1.0 / np.sqrt(1.0 + t * t)
                s = t * c
                new_pp, new_qq = a_pp - t * a_pq, a_qq + t * a_pq
                column_p, column_q = a[:, :, p].copy(), a[:, :, q].copy()
                a[:, :, p] = c[:, None] * column_p - s[:, None] * column_q
                a[:, :, q] = s[:, None] * column_p + c[:, None] * column_q
                row_p, row_q = a[:, p, :].copy(), a[:, q, :].copy()
                a[:, p, :] = c[:, None] * row_p - s[:, None] * row_q
                a[:, q, :] = s[:, None] * row_p + c[:, None] * row_q
                a[:, p, p], a[:, q, q], a[:, p, q], a[:, q, p] = new_pp, new_qq, 0.0, 0.0
                vector_p, vector_q = v[:, :, p].copy(), v[:, :, q].copy()
                v[:, :, p] = c[:, None] * vector_p - s[:, None] * vector_q
                v[:, :, q] = s[:, None] * vector_p + c[:, None] * vector_q
        if not rotated:
            break
    eigenvalues = np.diagonal(a, axis1=-2, axis2=-1)
    order = np.argsort(eigenvalues, axis=-1, kind="stable")
    eigenvalues = np.take_along_axis(eigenvalues, order, axis=-1)
    v = np.take_along_axis(v, order[:, None, :], axis=-1)
    return eigenvalues.reshape(shape[:-1]).copy(), v.reshape(shape).copy()


def _host_float64_np(gramian: Tensor, method: str) -> np.ndarray:
    """`_host_float64` as a numpy array."""
    gram = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(gram).all():
        raise NonFiniteGradientError(f"{method}: the Gramian contains NaN or infinite entries")
    return 0.5 * (gram + np.swapaxes(gram, -1, -2))


def _canonical_order_np(gram: np.ndarray, /) -> np.ndarray:
    """`canonical_order` on a numpy array (the same keys, sums of the sorted row)."""
    rows = np.sort(gram, axis=-1)
    keys = ((rows * rows).sum(axis=-1), rows.sum(axis=-1), np.diagonal(gram, axis1=-2, axis2=-1))
    order = np.broadcast_to(np.arange(gram.shape[-1]), gram.shape[:-1])
    for key in keys:  # least significant first: successive stable sorts
        order = np.take_along_axis(
            order,
            np.argsort(np.take_along_axis(key, order, axis=-1), axis=-1, kind="stable"),
            axis=-1,
        )
    return order


def _cosines_np(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_cosines` on a numpy array (the norms by torch's square root, as `_cosines`: it can
    differ from numpy's in the last bit)."""
    norms = torch.diagonal(torch.from_numpy(gram), dim1=-2, dim2=-1).clamp_min(0).sqrt().numpy()
    nonzero = norms > 0
    safe = np.where(nonzero, norms, 1.0)
    cosine = gram / safe[..., :, None] / safe[..., None, :]
    cosine = np.clip(0.5 * (cosine + np.swapaxes(cosine, -1, -2)), -1.0, 1.0)
    both = nonzero[..., :, None] & nonzero[..., None, :]
    cosine = np.where(both, cosine, 0.0)
    return np.where(np.eye(gram.shape[-1], dtype=bool) & both, 1.0, cosine), norms, nonzero


def _ordered_total_np(values: np.ndarray) -> np.ndarray:
    """The sum over the last dimension in index order."""
    total = values[..., 0]
    for index in range(1, values.shape[-1]):
        total = total + values[..., index]
    return total


def _reorder_np(gram: np.ndarray, order: np.ndarray) -> np.ndarray:
    rows = np.take_along_axis(gram, order[..., :, None], axis=-2)
    return np.take_along_axis(rows, order[..., None, :], axis=-1)


def _restore_np(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    restored = np.empty_like(values)
    np.put_along_axis(restored, order, values, axis=-1)
    return restored


def _ordered_product_np(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """`left @ right` for `[..., K, K]`, each entry summed over the inner index in index order
    (elementwise operations: the same bits batched or alone)."""
    total = left[..., :, 0, None] * right[..., None, 0, :]
    for index in range(1, left.shape[-1]):
        total = total + left[..., :, index, None] * right[..., None, index, :]
    return total


def _matvec_np(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """`matrix @ vector` for `[..., K, K]` and `[..., K]`, summed in index order."""
    total = matrix[..., 0] * vector[..., 0, None]
    for index in range(1, matrix.shape[-1]):
        total = total + matrix[..., index] * vector[..., index, None]
    return total


def _reorder(gram: Tensor, order: Tensor) -> Tensor:
    """`G[order][:, order]`, batched."""
    rows = gram.gather(-2, order[..., :, None].expand(gram.shape))
    return rows.gather(-1, order[..., None, :].expand(gram.shape))


def _restore(values: Tensor, order: Tensor) -> Tensor:
    """Per-task values `[..., K]` computed in `order`, back in the original task order."""
    return torch.empty_like(values).scatter(-1, order, values)


# --------------------------------------------------------------------------------------------
# Aligned-MTL
# --------------------------------------------------------------------------------------------

ScaleMode = Literal["min", "median", "rmse"]


class AlignedMTL(GradientWeighting):
    """Aligned-MTL, independent component alignment (Senushkin, Patakin, Kuznetsov, Konushin, CVPR 2023, Alg. 1).

    With the eigendecomposition `G = V L V^T` of the Gramian, its rank r (eigenvalues above
    `lambda_max * K * eps`, eps of the Gramian's dtype, as the reference code) and the r leading
    eigenpairs `V_r, L_r`, the balance transformation is

        B = sqrt(s) V_r L_r^(-1/2) V_r^T,      s = lambda_r ("min"), the median of L_r, or mean(L_r) ("rmse"),

    the aligned gradients are the rows of `B J` (orthogonal, equal norms `sqrt(s)`: their Gramian
    `B G B = s V_r V_r^T` has condition number 1 on its range) and the update is
    `d = (B J)^T p = J^T (B p)`, so the weights are `w = B p`. With `G = 0` (rank 0) `w = p`.
    "median" is the lower median for an even r (`torch.median`, as the reference).

    Defaults: `scale_mode="min"` (paper and reference code); `pref_vector` None means `p = 1`,
    the sum of the aligned gradients, as the reference code (SamsungLabs/MTL,
    `grads[0].sum(-1)`) and LibMTL (`B.sum(0)`). TorchJD's `AlignedMTLWeighting` averages
    (`p = 1/K`): `pref_vector=[1/K, ...]` reproduces it. Heads receive the plain `grad l_i`
    (LibMTL, TorchJD).

    Claims: permutation equivariant with equal preferences (B is a spectral function of G). Not
    non-conflicting: `G w = sqrt(s) G^(1/2) p`, which can be negative (`G^(1/2) = [[10, -3], [-3, 1]]`
    gives `G^(1/2) 1 = (7, -2)`), and not invariant to per-task rescaling.

    Numerics: the eigendecomposition is the cyclic Jacobi method (`jacobi_eigh`), which resolves
    each eigenvalue to its own size on a Gramian of gradients with very different norms (the
    reference's `symeig`/`eigh` only to `eps lambda_max`: on a drawn Gramian with eigenvalues 1.8e-4
    and 2.4e7 it misses the small one by 4e-9 relative, Jacobi by 6e-12, and B by ~1e-5 against
    ~1e-9), and it runs in a canonical task order (`canonical_order`) so that relabelling the tasks
    relabels the weights bitwise. Batched: one vectorised Jacobi sweep loop for the whole batch.

    Diagnostics: `"rank"` (batch shape) the rank r used.

    Args:
        pref_vector: K finite non-negative preferences, not all zero (None: 1 each).
        scale_mode: "min" (default), "median" or "rmse" (mean eigenvalue).
    """

    name = "aligned_mtl"
    paper = "Senushkin, Patakin, Kuznetsov, Konushin, Independent Component Alignment for Multi-Task Learning (Aligned-MTL; CVPR 2023)"
    claims = frozenset({"permutation_equivariant"})
    head_gradient = HeadGradient.RAW

    def __init__(
        self, *, pref_vector: Sequence[float] | None = None, scale_mode: ScaleMode = "min"
    ) -> None:
        self.pref_vector = check_preference_vector(pref_vector, "AlignedMTL")
        if scale_mode not in ("min", "median", "rmse"):
            raise InvalidHyperparameterError(
                f"scale_mode must be 'min' (smallest eigenvalue), 'median' or 'rmse' (mean eigenvalue), got {scale_mode!r}"
            )
        self.scale_mode = scale_mode
        if self.pref_vector is not None and len(set(self.pref_vector)) > 1:
            self.claims = frozenset()

    def balance_transformation(self, gramian: Tensor, /) -> tuple[Tensor, Tensor]:
        """`B` `[..., K, K]` (float64, host) and the rank `[...]` for a Gramian `[..., K, K]`,
        computed in the canonical task order (`canonical_order`) and returned in the given one."""
        gram = _host_float64(gramian, "AlignedMTL")
        order = canonical_order(gram)
        balance, rank = self._balance(_reorder(gram, order), gramian.dtype)
        inverse = order.argsort(dim=-1)
        return _reorder(balance, inverse), rank

    def _balance(self, gram: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        num_tasks = gram.shape[-1]
        eigenvalues, vectors = jacobi_eigh(gram)  # ascending; accurate for small eigenvalues too
        tolerance = eigenvalues[..., -1:] * num_tasks * torch.finfo(dtype).eps
        kept = eigenvalues > tolerance
        rank = kept.sum(dim=-1)
        safe = torch.where(kept, eigenvalues, torch.ones_like(eigenvalues))
        inverse_roots = torch.where(kept, safe.rsqrt(), torch.zeros_like(eigenvalues))
        # the kept eigenvalues are the last r of the ascending list
        first_kept = (num_tasks - rank).clamp(max=num_tasks - 1)
        if self.scale_mode == "min":
            position = first_kept
        elif self.scale_mode == "median":
            position = first_kept + (rank - 1).clamp_min(0) // 2
        else:
            position = None
        if position is None:
            scale = torch.where(kept, eigenvalues, torch.zeros_like(eigenvalues)).sum(
                dim=-1
            ) / rank.clamp_min(1)
        else:
            scale = eigenvalues.gather(-1, position[..., None])[..., 0]
        balance = (
            scale.clamp_min(0).sqrt()[..., None, None]
            * (vectors * inverse_roots[..., None, :])
            @ vectors.transpose(-1, -2)
        )
        identity = torch.eye(num_tasks, dtype=torch.float64).expand_as(balance)
        balance = torch.where((rank == 0)[..., None, None], identity, balance)
        return balance, rank

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        num_tasks = gramian.shape[-1]
        gram = _host_float64_np(gramian, "AlignedMTL")
        order = _canonical_order_np(gram)  # relabelled tasks give relabelled weights, bitwise
        balance, rank = self._balance_np(_reorder_np(gram, order), gramian.dtype)
        preference = preference_weights(self.pref_vector, num_tasks, 1.0, "AlignedMTL").numpy()[
            order
        ]
        weights = torch.from_numpy(_restore_np(_matvec_np(balance, preference), order))
        return WeightsResult(
            weights_in_dtype(weights.to(gramian.device), gramian.dtype, "AlignedMTL"),
            {"rank": torch.from_numpy(np.asarray(rank))},
        )

    def _balance_np(self, gram: np.ndarray, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
        """`_balance` on numpy arrays (the per-step path; the same steps, up to the rounding of
        the square roots and of the small products, which are written as ordered sums)."""
        num_tasks = gram.shape[-1]
        eigenvalues, vectors = _jacobi_eigh_np(gram)
        tolerance = eigenvalues[..., -1:] * num_tasks * torch.finfo(dtype).eps
        kept = eigenvalues > tolerance
        rank = kept.sum(axis=-1)
        safe = np.where(kept, eigenvalues, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse_roots = np.where(kept, 1.0 / np.sqrt(safe), 0.0)
        first_kept = np.minimum(num_tasks - rank, num_tasks - 1)
        if self.scale_mode == "min":
            position = first_kept
        elif self.scale_mode == "median":
            position = first_kept + np.maximum(rank - 1, 0) // 2
        else:
            position = None
        if position is None:
            scale = np.where(kept, eigenvalues, 0.0).sum(axis=-1) / np.maximum(rank, 1)
        else:
            scale = np.take_along_axis(eigenvalues, np.asarray(position)[..., None], axis=-1)[
                ..., 0
            ]
        scaled = vectors * inverse_roots[..., None, :]
        product = _ordered_product_np(scaled, np.swapaxes(vectors, -1, -2))
        balance = np.sqrt(np.maximum(scale, 0.0))[..., None, None] * product
        balance = np.where((rank == 0)[..., None, None], np.eye(num_tasks), balance)
        return balance, rank


# --------------------------------------------------------------------------------------------
# ConFIG
# --------------------------------------------------------------------------------------------

_CONFIG_ROUNDING = 64.0
"""ConFIG's `update_bound` diagnostic: this many times `K eps sum_i ||g_i||`, the rounding its
update can carry where opposite unit gradients cancel (the length's error)."""
_CONFIG_RTOL = 1e-10
"""Eigenvalues of the cosine Gramian below this fraction of the largest count as zero in its
pseudo-inverse (unit gradients that agree to about 1e-5 in angle are treated as dependent)."""


class ConFIG(GradientWeighting):
    """ConFIG, conflict-free inverse gradients (Liu, Chu, Thuerey, ICLR 2025, eq. 2).

    Paper: "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks".

    With the unit gradients `u_i = g_i / ||g_i||` (rows of U) and the preference vector p (ones),
    the direction is `g_u = U^T (U U^T)^+ p` (the minimum-norm solution of `U x = p`: equal
    cosines with every unit gradient when U has full row rank), and the update is
    `d = (sum_i g_i . g_u_hat) g_u_hat`, `g_u_hat = g_u / ||g_u||`. On the Gramian: with the cosine
    Gramian `C = U U^T`, `beta = C^+ p` and `a_i = beta_i / ||g_i||`, `g_u = sum_i a_i g_i`, so

        w = a (1^T G a) / (a^T G a).

    The length `sum_i g_i . g_u_hat` is summed over every task (not weighted by p), as in the
    reference and TorchJD. A zero gradient has the zero unit vector (reference: `nan_to_num`),
    so it gets `a_i = 0` and weight 0. If `g_u = 0` (p orthogonal to the range of C, e.g.
    `g_2 = -c g_1`), the update is 0 and so are the weights.

    Pseudo-inverse: from the eigendecomposition of C, eigenvalues below `1e-10 lambda_max` taken
    as zero (the reference takes `pinv`/`lstsq` of U itself, with a cutoff of about
    `max(K, D) eps` on singular values; a Gramian resolves the eigenvalues of C only to about
    `K eps lambda_max`, so directions that agree to ~1e-5 are treated as dependent here). Computed
    in a canonical task order (`canonical_order`), so that relabelling the tasks relabels the
    weights bitwise. Conditioning: where a task with a large gradient is cancelled by an opposite
    one (`u_1 = -u_3`), its projection `u_1 . g_u` is 0 only up to the rounding of C, and the
    length inherits `||g_1|| eps` of error, which can be 1e-8 of the length.

    Claims: permutation equivariant with equal preferences. Not declared: non-conflicting and
    equal projections hold where U has full row rank (`u_i . d` is the same positive number
    for every task), not on rank-deficient input (`u_1 = u_2 = -u_3` gives
    `U g_u = (1, 1, -1)/3`, and with `||g_3|| > ||g_1|| + ||g_2||` the length is negative: d
    conflicts with tasks 1 and 2); not rescaling invariant (the length depends on the norms).
    Heads receive the plain `grad l_i` (TorchJD).

    Args:
        pref_vector: K finite non-negative preferences, not all zero (None: 1 each; only the
            direction depends on them).
    """

    name = "config"
    paper = "Liu, Chu, Thuerey, ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks (ICLR 2025)"
    claims = frozenset({"permutation_equivariant"})
    head_gradient = HeadGradient.RAW

    def __init__(self, *, pref_vector: Sequence[float] | None = None) -> None:
        self.pref_vector = check_preference_vector(pref_vector, "ConFIG")
        if self.pref_vector is not None and len(set(self.pref_vector)) > 1:
            self.claims = frozenset()

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        # on numpy arrays (a torch call costs more than the arithmetic on [..., K, K]); products
        # are ordered sums, so a batch row gives the bits it gives alone
        gram = _host_float64_np(gramian, "ConFIG")
        num_tasks = gram.shape[-1]
        order = _canonical_order_np(gram)  # relabelled tasks give relabelled weights, bitwise
        gram = _reorder_np(gram, order)
        preference = preference_weights(self.pref_vector, num_tasks, 1.0, "ConFIG").numpy()[order]
        cosine, norms, nonzero = _cosines_np(gram)
        eigenvalues, vectors = np.linalg.eigh(cosine)
        kept = eigenvalues > _CONFIG_RTOL * np.maximum(eigenvalues[..., -1:], 0.0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inverse = np.where(kept, 1.0 / np.where(kept, eigenvalues, 1.0), 0.0)
            coordinates = _matvec_np(np.swapaxes(vectors, -1, -2), preference)  # V^T p
            beta = _matvec_np(vectors, inverse * coordinates)  # C^+ p
            squared = _ordered_total_np(
                coordinates * coordinates * inverse
            )  # ||g_u||^2 = p^T C^+ p
            projected = _matvec_np(vectors, kept * coordinates)  # C C^+ p = U g_u
            safe_norms = np.where(nonzero, norms, 1.0)
            coefficients = np.where(nonzero, beta / safe_norms, 0.0)
            length_times_norm = _ordered_total_np(norms * projected)  # sum_i g_i . g_u = 1^T G a
            usable = squared > 0
            factor = np.where(usable, length_times_norm / np.where(usable, squared, 1.0), 0.0)
        weights = torch.from_numpy(_restore_np(coefficients * factor[..., None], order))
        # the length carries the rounding of C times every gradient's norm (see Conditioning above)
        bound = torch.from_numpy(
            np.asarray(_CONFIG_ROUNDING * num_tasks * _EPS * _ordered_total_np(norms))
        )
        kept = torch.from_numpy(kept)
        diagnostics = {"rank": kept.sum(dim=-1), "update_bound": bound}
        return WeightsResult(
            weights_in_dtype(weights.to(gramian.device), gramian.dtype, "ConFIG"), diagnostics
        )


# --------------------------------------------------------------------------------------------
# GradVac
# --------------------------------------------------------------------------------------------


def gradvac_coefficients(
    gramian: Tensor, targets: Tensor, orders: Tensor, /, *, beta: float, eps: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """One GradVac step on Gramians `[..., K, K]`: coefficients `C` `[..., K, K]` with
    `g_i' = sum_m C_im g_m`, the updated EMA targets `[..., K, K]` and the number of corrections
    `[...]`.

    `targets[..., i, j]` is `phi_hat_ij`; `orders [..., K, K-1]` lists, for each task i, the
    other tasks j in the order in which they are visited. Starting from `C_i = e_i`, for each j in
    turn, with `phi = g_i' . g_j / (||g_i'|| ||g_j|| + eps)` (Wang et al. 2021, the GradVac update rule):
    if `phi < phi_hat_ij`,

        C_ij += ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (||g_j|| sqrt(1 - phi_hat^2) + eps),

    which moves the cosine of `g_i'` with `g_j` exactly to `phi_hat` (for eps = 0); then
    `phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi`. A pair with `||g_i'|| = 0` or `||g_j|| = 0`
    has no cosine: no correction and no EMA update. A correction towards `phi_hat = 1` (the
    denominator is 0) is not finite: it is skipped. All tasks i are processed at once (row i
    depends only on row i), in float64; batched over the leading dimensions.
    """
    num_tasks = gramian.shape[-1]
    eye = torch.eye(num_tasks, dtype=gramian.dtype)
    coefficients = eye.expand(gramian.shape).clone()
    norms = torch.diagonal(gramian, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    targets = targets.clone()
    corrections = torch.zeros(gramian.shape[:-2], dtype=torch.int64)
    for step in range(num_tasks - 1):
        other = orders[..., step]  # [..., K]: the j each row i meets now
        products = coefficients @ gramian  # [..., i, k]: g_i' . g_k
        dot = products.gather(-1, other[..., None])[..., 0]
        norm_i = (products * coefficients).sum(dim=-1).clamp_min(0).sqrt()
        norm_j = norms.gather(-1, other)
        measured = (norm_i > 0) & (norm_j > 0)
        denominator = norm_i * norm_j + eps
        cosine = torch.where(
            measured,
            dot / torch.where(measured, denominator, torch.ones_like(denominator)),
            torch.zeros_like(dot),
        )
        cosine = cosine.clamp(-1.0, 1.0)
        target = targets.gather(-1, other[..., None])[..., 0]
        sine = (1 - cosine**2).clamp_min(0).sqrt()
        target_sine = (1 - target**2).clamp_min(0).sqrt()
        scale = norm_j * target_sine + eps
        correct = measured & (cosine < target) & (scale > 0)
        amount = (
            norm_i
            * (target * sine - cosine * target_sine)
            / torch.where(correct, scale, torch.ones_like(scale))
        )
        amount = torch.where(correct, amount, torch.zeros_like(amount))
        coefficients = coefficients + amount[..., None] * torch.nn.functional.one_hot(
            other, num_tasks
        ).to(gramian.dtype)
        updated = torch.where(measured, (1 - beta) * target + beta * cosine, target)
        targets = targets.scatter(-1, other[..., None], updated[..., None])
        corrections = corrections + correct.sum(dim=-1)
    return coefficients, targets, corrections


def _gradvac_coefficients_np(
    gram: np.ndarray, targets: np.ndarray, orders: np.ndarray, beta: float, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`gradvac_coefficients` on numpy arrays (what `GradVac` calls at every step: a torch call
    costs more than the arithmetic on `[..., K, K]`): the same operations in the same order, up
    to the rounding of the square roots and of the small matrix products."""
    num_tasks = gram.shape[-1]
    coefficients = np.broadcast_to(np.eye(num_tasks), gram.shape).copy()
    norms = np.sqrt(np.maximum(np.diagonal(gram, axis1=-2, axis2=-1), 0.0))
    targets = targets.copy()
    corrections = np.zeros(gram.shape[:-2], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for step in range(num_tasks - 1):
            other = orders[..., step, None]  # [..., K, 1]: the j each row i meets now
            products = coefficients @ gram  # [..., i, k]: g_i' . g_k
            dot = np.take_along_axis(products, other, axis=-1)[..., 0]
            norm_i = np.sqrt(np.maximum((products * coefficients).sum(axis=-1), 0.0))
            norm_j = np.take_along_axis(norms, other[..., 0], axis=-1)
            measured = (norm_i > 0) & (norm_j > 0)
            denominator = norm_i * norm_j + eps
            cosine = np.clip(
                np.where(measured, dot / np.where(measured, denominator, 1.0), 0.0), -1.0, 1.0
            )
            target = np.take_along_axis(targets, other, axis=-1)[..., 0]
            sine = np.sqrt(np.maximum(1 - cosine * cosine, 0.0))
            target_sine = np.sqrt(np.maximum(1 - target * target, 0.0))
            scale = norm_j * target_sine + eps
            correct = measured & (cosine < target) & (scale > 0)
            amount = norm_i * (target * sine - cosine * target_sine) / np.where(correct, scale, 1.0)
            amount = np.where(correct, amount, 0.0)
            np.put_along_axis(
                coefficients,
                other,
                np.take_along_axis(coefficients, other, axis=-1) + amount[..., None],
                axis=-1,
            )
            updated = np.where(measured, (1 - beta) * target + beta * cosine, target)
            np.put_along_axis(targets, other, updated[..., None], axis=-1)
            corrections = corrections + correct.sum(axis=-1)
    return coefficients, targets, corrections


def _gradvac_two_tasks_np(
    gram: np.ndarray, targets: np.ndarray, beta: float, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_gradvac_coefficients_np` for K = 2, written out: each task meets the other once, with
    `C = I` (so `g_i' . g_j = G_12` and `||g_i'|| = ||g_i||`); returns the weights (the column sums
    `1 + C_ji`) instead of C, the targets and the corrections."""
    norm_i = np.sqrt(np.maximum(np.diagonal(gram, axis1=-2, axis2=-1), 0.0))  # [..., 2]
    norm_j = norm_i[..., ::-1]
    dot = gram[..., 0, 1, None]  # the symmetric part: G_12 == G_21
    target = np.stack([targets[..., 0, 1], targets[..., 1, 0]], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        measured = (norm_i > 0) & (norm_j > 0)
        denominator = norm_i * norm_j + eps
        cosine = np.clip(
            np.where(measured, dot / np.where(measured, denominator, 1.0), 0.0), -1.0, 1.0
        )
        sine = np.sqrt(np.maximum(1 - cosine * cosine, 0.0))
        target_sine = np.sqrt(np.maximum(1 - target * target, 0.0))
        scale = norm_j * target_sine + eps
        correct = measured & (cosine < target) & (scale > 0)
        amount = norm_i * (target * sine - cosine * target_sine) / np.where(correct, scale, 1.0)
        amount = np.where(correct, amount, 0.0)  # C_12 (row 0) and C_21 (row 1)
    updated = np.where(measured, (1 - beta) * target + beta * cosine, target)
    targets = targets.copy()
    targets[..., 0, 1], targets[..., 1, 0] = updated[..., 0], updated[..., 1]
    weights = 1.0 + amount[..., ::-1]  # w_0 = C_00 + C_10, w_1 = C_01 + C_11
    return weights, targets, correct.sum(axis=-1)


class GradVac(GradientWeighting):
    """Gradient Vaccine, GradVac (Wang, Tsvetkov, Firat, Cao, ICLR 2021), on the Gramian.

    For each task i, in a random order of the other tasks j, the cosine `phi` of the (already
    corrected) `g_i'` with the original `g_j` is compared with an EMA target `phi_hat_ij`; if
    `phi < phi_hat_ij`, a multiple of `g_j` is added to `g_i'` so that their cosine becomes
    `phi_hat_ij` exactly, and `phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi` (the paper's EMA,
    with `phi` measured before the correction). The update is `sum_i g_i'`. On the Gramian each
    `g_i'` is tracked by its coefficients on the original gradients (`gradvac_coefficients`, as
    TorchJD's `GradVacWeighting`), and the weights are their column sums `w = sum_i C_i`. With
    `phi_hat = 0` (the first call) the correction is PCGrad's projection.

    State: the targets `phi_hat` `[*batch_shape, K, K]` (zeros at the start, the diagonal unused),
    created at the first call from the Gramian's shape; `reset(batch_shape)` forgets them. A
    batch of B Gramians advances B independent runs (each with its own targets), drawing every
    row's orders from the one generator.

    Randomness: one uniformly random order of the other K - 1 tasks per task i (and per batch
    element), the argsort of K x K float64 uniforms from `generator` (the diagonal forced last),
    as PCGrad; `generator=None` draws from the global RNG. K <= 2 has one order and draws
    nothing. `shuffle=False` visits the other tasks in index order instead (deterministic; not
    in the paper or the references).

    Defaults: `beta = 0.5`, the EMA decay of LibMTL (`GradVac_beta`) and TorchJD. The paper's
    experiments use a slower EMA (beta = 1e-2 as cited for the paper, not re-checked against its text;
    docs/DECISIONS.md): `gradvac:beta=0.01`.
    `eps = 0`: the exact cosines and correction of the paper. LibMTL and TorchJD add `eps = 1e-8`
    to both denominators, an absolute constant that biases the cosines of small gradients
    (for `||g|| ~ 1e-4` it halves them); `eps=1e-8` reproduces them where both norms are nonzero.
    Granularity: the whole shared parameter vector (LibMTL's `GradVac_group_type=0`); per-layer
    targets need per-layer Gramians and are not offered. Heads receive the plain `grad l_i`.

    Deviations: LibMTL updates the EMA only when it corrects (its update sits inside the `if`);
    this follows the paper and TorchJD (every visited pair). TorchJD and LibMTL compute a cosine
    of 0 for a zero gradient (from eps) and move the EMA towards it; here such pairs are skipped.

    Claims: none (random order: permutation equivariant only in distribution; corrections towards
    positive targets can leave conflicts; not invariant to rescaling).

    Diagnostics: `"corrections"` (batch shape) the number of corrections made.

    Args:
        beta: EMA decay in [0, 1] (0: the targets stay 0, every call is PCGrad).
        eps: non-negative constant added to the denominators (references: 1e-8).
        shuffle: visit the other tasks in a random order (the paper) or in index order.
    """

    name = "gradvac"
    paper = "Wang, Tsvetkov, Firat, Cao, Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively Multilingual Models (ICLR 2021)"
    claims = frozenset()
    stateful = True
    random = True
    head_gradient = HeadGradient.RAW

    def __init__(
        self,
        *,
        beta: float = 0.5,
        eps: float = 0.0,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.beta = check_number(
            "beta (the EMA decay of the target cosines)", beta, minimum=0.0, maximum=1.0
        )
        self.eps = check_number("eps", eps, minimum=0.0)
        if not isinstance(shuffle, bool):
            raise InvalidHyperparameterError(f"shuffle must be True or False, got {shuffle!r}")
        self.shuffle = shuffle
        check_generator(generator)
        self._generator = generator
        self.reset()

    @property
    def generator(self) -> torch.Generator | None:
        return self._generator

    @property
    def targets(self) -> Tensor | None:
        """The EMA targets `phi_hat` `[*batch_shape, K, K]` (None before the first call)."""
        return self._targets

    def reset(self, batch_shape: tuple[int, ...] = ()) -> None:
        super().reset(batch_shape)
        self._targets: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        targets = None if self._targets is None else self._targets.clone()
        return {
            "batch_shape": list(self.batch_shape),
            "targets": targets,
            **generator_state(self._generator),
        }

    def load_state_dict(self, state: Mapping[str, Any], /) -> None:
        if "batch_shape" not in state or "targets" not in state:
            raise MTLInputError(
                "GradVac state needs 'batch_shape' and 'targets'; pass what GradVac.state_dict() returned"
            )
        self.reset(tuple(state["batch_shape"]))
        targets = state["targets"]
        if targets is not None:
            targets = torch.as_tensor(targets, dtype=torch.float64).clone()
            if (
                tuple(targets.shape[:-2]) != self.batch_shape
                or targets.shape[-1] != targets.shape[-2]
            ):
                raise MTLInputError(
                    f"GradVac state 'targets' has shape {tuple(targets.shape)}, expected [*{self.batch_shape}, K, K]"
                )
            self._targets = targets
            self._pristine = False
        load_generator_state(
            self._generator, {k: v for k, v in state.items() if k == "generator"}, "GradVac"
        )

    def visiting_orders(self, batch_shape: tuple[int, ...], num_tasks: int) -> Tensor:
        """Orders `[*batch_shape, K, K-1]` (int64): row i lists the tasks other than i, in random
        order (`shuffle=True`, drawing `prod(batch_shape) K^2` uniforms when K >= 3) or in index order."""
        if not self.shuffle or num_tasks <= 2:
            keys = torch.arange(num_tasks, dtype=torch.float64).expand(
                *batch_shape, num_tasks, num_tasks
            )
        else:
            draw_device = self._generator.device if self._generator is not None else None
            keys = torch.rand(
                (*batch_shape, num_tasks, num_tasks),
                generator=self._generator,
                dtype=torch.float64,
                device=draw_device,
            ).cpu()
        keys = keys + 2.0 * num_tasks * torch.eye(
            num_tasks, dtype=torch.float64
        )  # j = i sorts last
        return keys.argsort(dim=-1)[..., : num_tasks - 1]

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        gram = _host_float64(gramian, "GradVac")
        batch_shape, num_tasks = tuple(gram.shape[:-2]), gram.shape[-1]
        self._match_batch_shape(batch_shape)
        if self._targets is not None and self._targets.shape[-1] != num_tasks:
            raise MTLInputError(
                f"GradVac holds targets for {self._targets.shape[-1]} tasks, got a Gramian of {num_tasks}; call reset()"
            )
        targets = self._targets.numpy() if self._targets is not None else np.zeros(gram.shape)
        if num_tasks == 2:  # one order, nothing drawn
            weights, targets, corrections = _gradvac_two_tasks_np(
                gram.numpy(), targets, self.beta, self.eps
            )
        else:
            orders = self.visiting_orders(batch_shape, num_tasks)
            coefficients, targets, corrections = _gradvac_coefficients_np(
                gram.numpy(), targets, orders.numpy(), self.beta, self.eps
            )
            weights = coefficients.sum(axis=-2)
        self._targets = torch.from_numpy(targets)
        self._used()
        output = torch.from_numpy(np.asarray(weights))
        return WeightsResult(
            weights_in_dtype(output.to(gramian.device), gramian.dtype, "GradVac"),
            {"corrections": torch.from_numpy(np.asarray(corrections))},
        )


# --------------------------------------------------------------------------------------------
# FairGrad
# --------------------------------------------------------------------------------------------

_ARMIJO = 1e-4
_NOISE = 8 * _EPS
_STALL_LIMIT = 3
_STALL_CHANGE = 1e-4
_STALL_IMPROVEMENT = 0.9
"""A problem stops after `_STALL_LIMIT` consecutive steps that change no weight by more than
`_STALL_CHANGE` (relative) and do not bring the best largest residual below
`_STALL_IMPROVEMENT` times itself: the residual has reached its rounding floor."""
_SMALLEST = 1e-250
"""Weights stay in [1e-250, 1e250], so that every power of them the solver forms is finite."""
_PATH_KNEE = -0.5
"""Where the Newton path `w (1 + x)` turns exponential (`_newton_path`)."""
_LARGEST_SHRINK = 30.0
"""One step divides a weight by at most e^30 (keeps it far from underflow)."""
_MAX_HALVINGS = 60
_STEP_FLOOR = 16 * _EPS
"""A Newton step that changes no weight by more than this relative amount is rounding noise: stop."""


class FairGrad(GradientWeighting):
    """FairGrad, alpha-fair allocation of the update among the tasks (Ban & Ji, ICML 2024, eq. 4, Alg. 1).

    Paper: "Fair Resource Allocation in Multi-Task Learning".

    The update `d = sum_i w_i g_i` maximises the alpha-fair utility of the tasks' "resources"
    `g_i . d`; its weights solve

        G w = w^(-1/alpha),   w > 0        (elementwise: w_i^(1/alpha) (G w)_i = 1),

    so `g_i . d = w_i^(-1/alpha) > 0` for every task. alpha = 1 (proportional fairness) is
    Nash-MTL's `G w = 1/w`; alpha -> infinity approaches max-min fairness. The equation is the
    optimality condition of the strictly convex problem

        min_{w > 0} F(w) = 1/2 w^T G w - sum_i phi(w_i),   phi(w) = w^(1 - 1/alpha) / (1 - 1/alpha)  (log w at alpha = 1).

    **Solver** (replaces the reference's `scipy.optimize.least_squares` from `w = 1/K`): damped
    Newton on F, vectorised over the batch, in float64 on the host. In relative coordinates, with
    `q_i = w_i^(1 - 1/alpha)`, the relative residual `r_i = w_i^(1/alpha) (G w)_i - 1` and
    `h_i = w_i^((1 + 1/alpha)/2) ||g_i||`, the Newton step `t = (w' - w) / w` solves
    `(H U H + I / alpha) z = -sqrt(q) r`, `t = z / sqrt(q)` (H = diag(h), U the cosine Gramian), a
    system whose eigenvalues are >= 1/alpha (Cholesky). The step follows the Newton line
    `w (1 + tau t)` down to half a weight and an exponential beyond (`_newton_path`: weights stay
    positive, and one that must shrink by many orders of magnitude, as large alphas ask, does so
    in a few steps); tau starts at 1 and is halved until F decreases by the Armijo fraction 1e-4 of
    the Newton decrement, F's change computed task by task with the first-order terms cancelled
    by hand (F weighs the tasks by q_i, which can differ by many orders of magnitude), or, where
    that change is within its rounding error, until the largest |r_i| decreases. Start: the
    solution for orthogonal gradients, `w_i = G_ii^(-alpha/(1+alpha))`, moved to the minimiser of F
    on its ray. It stops when `max_i |r_i| <= tolerance`, at the rounding floor (no acceptable
    step, or three steps that change no weight by 1e-4 and do not improve the residual), or after
    `max_iterations`. Typical: 0-8 iterations (K = 2 with alpha = 1: the start is the solution, taken
    as it is: near Pareto stationarity Newton would spend 10-20 iterations moving it within its rounding floor).

    Regularisation and degenerate input (as `NashMTL`): a relative ridge `ridge * G_ii` on the
    diagonal makes F coercive where the equation has no solution (0 in the convex hull of the
    gradients: Pareto-stationary input), so the weights stay finite and d tends to 0; the
    reported residual shows it. A task with a zero gradient has no finite weight
    (`0 = w^(-1/alpha)`): it gets weight 0 and the others are solved without it.

    Defaults and scale: `alpha = 1.0`, the reference code's default (`--alpha 1.0`, OptMN-Lab/fairgrad
    `experiments/utils.py`), used for NYUv2/Cityscapes and in the DiBS-MTL toy and MT10 configs
    (its QM9 and CelebA scripts use 2.0). The weights solve the paper's equation; the reference
    code multiplies the shared update by K ("to match the sum loss") and clips the gradient norm
    to 1.0: neither is part of the weighting (multiply the weights by K, or clip in the training
    loop). Heads receive the plain `grad l_i` (the reference backpropagates each task loss into
    its head; LibMTL backpropagates `sum_i w_i l_i`).

    Claims: non-conflicting and permutation equivariant; at alpha = 1 also invariant to per-task
    rescaling and (per step) to monotone loss transforms (`g_i -> c_i g_i` maps `w_i -> w_i / c_i`),
    which alpha != 1 is not (`w_i` scales as `c_i^(-2 alpha/(1+alpha))` for orthogonal gradients).

    Diagnostics: `"residual"` (batch shape) `max_i |w_i^(1/alpha) (G w)_i - 1|` of the
    un-regularised system over tasks with nonzero gradients; `"iterations"`.

    Args:
        alpha: the fairness parameter (> 0).
        ridge: relative diagonal regularisation `ridge * G_ii`, in (0, 1).
        tolerance: stop when `max_i |r_i| <= tolerance` (of the regularised system).
        max_iterations: hard cap on Newton iterations (>= 1).
    """

    name = "fairgrad"
    paper = "Ban, Ji, Fair Resource Allocation in Multi-Task Learning (FairGrad; ICML 2024)"
    claims = frozenset(
        {"monotone_invariant", "rescaling_invariant", "permutation_equivariant", "non_conflicting"}
    )
    head_gradient = HeadGradient.RAW

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        ridge: float = 1e-10,
        tolerance: float = 1e-10,
        max_iterations: int = 100,
    ) -> None:
        self.alpha = check_number(
            "alpha (the fairness parameter; 1 is Nash-MTL's proportional fairness)",
            alpha,
            minimum=0.0,
            strict=True,
        )
        self.ridge = check_number("ridge", ridge, minimum=0.0, strict=True)
        if self.ridge >= 1:
            raise InvalidHyperparameterError(f"ridge must be in (0, 1), got {ridge!r}")
        self.tolerance = check_number("tolerance", tolerance, minimum=0.0, strict=True)
        self.max_iterations = check_integer("max_iterations", max_iterations)
        if self.alpha != 1.0:
            self.claims = frozenset({"permutation_equivariant", "non_conflicting"})

    def solve(self, gramian: Tensor, /) -> tuple[Tensor, Tensor, int]:
        """Weights `[..., K]` (float64, host; 0 for zero gradients), the un-regularised relative
        residual `[...]` and the Newton iterations used, for a Gramian `[..., K, K]`."""
        cosine, norms, nonzero = _cosines_np(_host_float64_np(gramian, "FairGrad"))
        weights, residual, iterations = _fairgrad_newton(
            cosine, norms, nonzero, self.alpha, self.ridge, self.tolerance, self.max_iterations
        )
        return torch.from_numpy(weights), torch.from_numpy(residual), iterations

    def _weights(self, gramian: Tensor, losses: Tensor, /) -> WeightsResult:
        weights, residual, iterations = self.solve(gramian)
        diagnostics = {"residual": residual, "iterations": torch.tensor(iterations)}
        return WeightsResult(
            weights_in_dtype(weights.to(gramian.device), gramian.dtype, "FairGrad"), diagnostics
        )


def _fairgrad_newton(
    cosine: np.ndarray,
    norms: np.ndarray,
    nonzero: np.ndarray,
    alpha: float,
    ridge: float,
    tolerance: float,
    max_iterations: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """FairGrad's damped Newton (see `FairGrad`) on cosine Gramians `[..., K, K]`, norms and the
    mask of nonzero gradients `[..., K]`; returns weights, the un-regularised residual, iterations."""
    shape = norms.shape
    num_tasks = shape[-1]
    mask = nonzero.reshape(-1, num_tasks)
    # zero gradients: decoupled unit tasks (identity row and column), their weight set to 0 at the end
    scale = np.where(mask, norms.reshape(-1, num_tasks), 1.0)
    unit = np.where(
        mask[:, :, None] & mask[:, None, :], cosine.reshape(-1, num_tasks, num_tasks), 0.0
    )
    diagonal = np.arange(num_tasks)
    unit[:, diagonal, diagonal] = 1.0 + ridge  # U + ridge I: G_r = N (U + ridge I) N
    problem = _FairGradProblem(unit, scale, alpha)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        # start: the orthogonal solution, then the minimiser of F on its ray
        weights = scale ** (-2.0 * alpha / (1.0 + alpha))
        quadratic = np.einsum("bi,bij,bj->b", scale * weights, unit, scale * weights)
        utility = (weights**problem.power).sum(axis=-1)
        weights = (
            weights * ((utility / quadratic) ** (1.0 / (1.0 + problem.inverse_alpha)))[:, None]
        )
        residual = problem.residual(weights, unit, scale)
        best = np.abs(residual).max(axis=-1)
        # K = 2, alpha = 1: the start is the regularised problem's exact minimiser,
        # w_i = 1 / (n_i sqrt(1 + ridge + cos)); near Pareto stationarity (cos -> -1) its residual
        # cannot reach the tolerance in float64, and Newton would only move it within that
        # rounding floor (1e-6 relative) for 10-20 iterations
        active = (
            best > tolerance
            if not (num_tasks == 2 and alpha == 1.0)
            else np.zeros(best.shape, dtype=bool)
        )
        stalls = np.zeros(best.shape, dtype=np.int64)
        iterations = 0
        while active.any() and iterations < max_iterations:
            iterations += 1
            index = np.flatnonzero(active)
            new_weights, new_residual, moved = problem.step(index, weights[index], residual[index])
            change = np.abs(new_weights / weights[index] - 1.0).max(axis=-1)
            weights[index], residual[index] = new_weights, new_residual
            worst = np.abs(new_residual).max(axis=-1)
            # at the rounding floor: small steps that do not improve the best residual
            stalled = (change <= _STALL_CHANGE) & (worst > _STALL_IMPROVEMENT * best[index])
            stalls[index] = np.where(stalled, stalls[index] + 1, 0)
            best[index] = np.minimum(best[index], worst)
            finished = (worst <= tolerance) | ~moved | (stalls[index] >= _STALL_LIMIT)
            active[index[finished]] = False
        weights = np.where(mask, weights, 0.0)
        plain = unit.copy()
        plain[:, diagonal, diagonal] = 1.0
        plain_residual = np.where(
            mask, problem.residual(np.where(mask, weights, 1.0), plain, scale), 0.0
        )
    worst = np.abs(plain_residual).max(axis=-1)
    return weights.reshape(shape), worst.reshape(shape[:-1]), iterations


class _FairGradProblem:
    """The batch of scaled FairGrad problems `N (U + ridge I) N w = w^(-1/alpha)` and one damped
    Newton step on a subset of them (see `FairGrad`)."""

    def __init__(self, unit: np.ndarray, scale: np.ndarray, alpha: float) -> None:
        self.unit, self.scale = unit, scale
        self.inverse_alpha = 1.0 / alpha
        self.power = 1.0 - 1.0 / alpha  # q = w^power
        self.identity = np.eye(unit.shape[-1]) * self.inverse_alpha

    def residual(self, weights: np.ndarray, unit: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """`r_i = w_i^(1/alpha) (G w)_i - 1`, with `(G w)_i = n_i (U (n w))_i`."""
        products = np.einsum("bij,bj->bi", unit, scale * weights) * scale
        return weights**self.inverse_alpha * products - 1.0

    def step(
        self, index: np.ndarray, w: np.ndarray, r: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One damped Newton step for the problems `index` at weights `w` with residuals `r`;
        returns the new weights, their residuals and which problems moved."""
        unit, scale, power, num_tasks = self.unit[index], self.scale[index], self.power, w.shape[-1]
        q = w**power
        h = w ** (0.5 * (1.0 + self.inverse_alpha)) * scale
        coupling = h[:, :, None] * unit * h[:, None, :]  # Q^-1/2 W G_r W Q^-1/2
        system = coupling + self.identity
        right = -np.sqrt(q) * r
        try:
            z = _cholesky_solve(np.linalg.cholesky(system), right)
        except np.linalg.LinAlgError:
            z = np.linalg.solve(system, right[..., None])[..., 0]
        t = z / np.sqrt(q)  # the Newton step, relative: (w' - w) / w
        decrement = np.einsum("bi,bi->b", z, right)  # lambda^2 = z . M z (M z = right)
        floor = ~(
            np.abs(t).max(axis=-1) > _STEP_FLOOR
        )  # the step changes no weight beyond rounding
        old_worst = np.abs(r).max(axis=-1)
        tau = np.ones(index.size)
        accepted = np.zeros(index.size, dtype=bool)
        new_weights, new_residual = w.copy(), r.copy()
        for _ in range(_MAX_HALVINGS):
            pending = ~accepted & ~floor
            if not pending.any():
                break
            relative, growth = _newton_path(
                tau[:, None] * t
            )  # w' = w (1 + relative), log(w'/w) = growth
            candidate = w * (1.0 + relative)
            inside = ((candidate >= _SMALLEST) & (candidate <= 1.0 / _SMALLEST)).all(axis=-1)
            scaled = np.sqrt(q) * relative
            coupled = np.einsum("bi,bij,bj->b", scaled, coupling, scaled)  # (w' - w)^T G_r (w' - w)
            # F(w') - F(w) = sum_i q_i (x_i r_i + E(x_i)) + coupled / 2, x = (w' - w) / w: the
            # first-order terms cancelled by hand, so that each task's change is resolved (F
            # weighs the tasks by q_i, which can differ by many orders of magnitude)
            per_task = q * (relative * r + _remainder(relative, growth, power))
            change = per_task.sum(axis=-1) + 0.5 * coupled
            candidate_residual = self.residual(candidate, unit, scale)
            worst = np.abs(candidate_residual).max(axis=-1)
            # Armijo on F; or, where F's change is within its rounding error (tasks whose q_i are
            # negligible next to others' have changes F cannot resolve), a smaller largest residual
            noise = _NOISE * num_tasks * (np.abs(per_task).sum(axis=-1) + coupled)
            sufficient = change <= -_ARMIJO * tau * decrement
            resolved_better = (change <= noise) & (worst < (1.0 - _ARMIJO) * old_worst)
            good = (
                pending
                & inside
                & np.isfinite(worst)
                & np.isfinite(change)
                & (sufficient | resolved_better)
            )
            new_weights[good], new_residual[good] = candidate[good], candidate_residual[good]
            accepted |= good
            tau = np.where(accepted, tau, 0.5 * tau)
        return new_weights, new_residual, accepted


def _remainder(relative: np.ndarray, growth: np.ndarray, power: float) -> np.ndarray:
    """`E(x) = x - ((1 + x)^p - 1) / p` (`x - log(1 + x)` for p = 0), the part of
    `phi(w (1 + x)) - phi(w)` beyond first order in units of `q = w^p`, without cancellation:
    its series `-sum_{k>=2} binom(p, k) / p x^k` for |x| <= 0.1, the closed form elsewhere."""
    small = np.abs(relative) <= 0.1
    x = np.where(small, relative, 0.0)
    series, coefficient, term = np.zeros_like(x), 1.0, x.copy()
    for k in range(2, 24):
        coefficient *= (power - k + 1) / k
        term = term * x
        series -= coefficient * term
    with np.errstate(over="ignore", invalid="ignore"):
        closed = relative - (np.expm1(power * growth) / power if power != 0 else growth)
    return np.where(small, series, closed)


def _newton_path(step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The relative change `psi(x) - 1` and `log psi(x)` of the path `w_i psi(tau t_i)`:
    `psi(x) = 1 + x` (the Newton line) down to `x = -1/2`, then `(1/2) exp(2 (x + 1/2))` (same
    value and slope there, and at most a factor e^-30 per step), so that no step reaches `w_i = 0`
    and a weight that must shrink by many orders of magnitude (large alpha:
    `w_i = (G w)_i^(-alpha)`) does so in a few steps."""
    below = step < _PATH_KNEE
    knee = 1.0 + _PATH_KNEE
    exponent = np.where(below, np.maximum((step - _PATH_KNEE) / knee, -_LARGEST_SHRINK), 0.0)
    relative = np.where(below, knee * np.exp(exponent) - 1.0, step)
    growth = np.where(below, np.log(knee) + exponent, np.log1p(np.where(below, 0.0, step)))
    return relative, growth


def _cholesky_solve(factor: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Solve `L L^T x = b` for batched lower-triangular L `[B, K, K]` and b `[B, K]`."""
    middle = np.linalg.solve(factor, right[..., None])
    return np.linalg.solve(np.swapaxes(factor, -1, -2), middle)[..., 0]
