"""Least squares on a growing set of column groups, for DCP's re-fit (see ``dcp``'s docstring)."""

from __future__ import annotations

import torch

_RIDGE = 1e-8  # relative to the mean diagonal of the Gram matrix; keeps the Cholesky factor defined


class GreedyLeastSquares:
    """Least squares on a growing set of column groups (k*k columns per channel), by a block Cholesky
    factor L of Gram[A, A] + ridge*I grown one group at a time.

    Kept up to date per step, with m selected columns:  Y = L^{-1} cross[A] [m, C_out];  Z = L^{-1}
    Gram[A, :] [m, D];  residual = cross^T - W_A Gram[A, :] = cross^T - Y^T Z [C_out, D], so that
    dL_M/dW = -residual / Q and min L_M = (phi - ||Y||^2) / (2Q) (up to the ridge term)."""

    def __init__(self, gram: torch.Tensor, cross: torch.Tensor, kk: int):
        self.gram, self.cross, self.kk = gram, cross, kk
        self.ridge = _RIDGE * float(gram.diagonal().mean()) + 1e-30
        self.residual = cross.T.clone()
        self.m = 0
        self._reserve(min(gram.shape[0], 16 * kk))

    def _reserve(self, rows: int) -> None:
        """Room for ``rows`` selected columns; grown by doubling, since most units keep far fewer
        than all of their D columns and a [D, D] float64 buffer is 170 MB for ResNet's layer4."""
        d, m = self.gram.shape[0], self.m
        chol, y, z, cols = (
            self.gram.new_zeros(rows, rows),
            self.gram.new_zeros(rows, self.cross.shape[1]),
            self.gram.new_zeros(rows, d),
            torch.zeros(rows, dtype=torch.long, device=self.gram.device),
        )
        if m:
            chol[:m, :m], y[:m], z[:m], cols[:m] = self.chol[:m, :m], self.y[:m], self.z[:m], self.cols[:m]
        self.chol, self.y, self.z, self.cols = chol, y, z, cols

    def add(self, channel: int) -> None:
        m, kk = self.m, self.kk
        if m + kk > self.chol.shape[0]:
            self._reserve(min(self.gram.shape[0], 2 * self.chol.shape[0]))
        cols = torch.arange(channel * kk, (channel + 1) * kk, device=self.gram.device)
        rows = self.gram[cols]  # Gram[j, :]  [kk, D]
        b = torch.linalg.solve_triangular(self.chol[:m, :m], rows[:, self.cols[:m]].T, upper=False)  # [m, kk]
        schur = rows[:, cols] - b.T @ b
        c = _cholesky(schur, self.ridge)
        self.chol[m : m + kk, :m] = b.T
        self.chol[m : m + kk, m : m + kk] = c
        y = torch.linalg.solve_triangular(c, self.cross[cols] - b.T @ self.y[:m], upper=False)  # [kk, C_out]
        z = torch.linalg.solve_triangular(c, rows - b.T @ self.z[:m], upper=False)  # [kk, D]
        self.y[m : m + kk], self.z[m : m + kk], self.cols[m : m + kk] = y, z, cols
        self.residual -= y.T @ z
        self.m = m + kk

    def loss(self, phi: float, q: int) -> float:
        return (phi - float(self.y[: self.m].pow(2).sum())) / (2 * q)

    def weights(self, m: int | None = None) -> torch.Tensor:
        """W [C_out, D]: the least-squares weights on the first ``m`` selected columns (default: all),
        zeros elsewhere. Later additions never change the factor's leading block, so a prefix's weights
        are the ones the search had when it stood there (contiguous copies: the same bits either way)."""
        m = self.m if m is None else m
        chol, y = self.chol[:m, :m].contiguous(), self.y[:m].contiguous()
        w_a = torch.linalg.solve_triangular(chol.T, y, upper=True)  # [m, C_out]
        w = self.cross.new_zeros(self.cross.shape[1], self.cross.shape[0])
        w[:, self.cols[:m]] = w_a.T
        return w


def _cholesky(a: torch.Tensor, ridge: float) -> torch.Tensor:
    """Cholesky factor of a + ridge*I, adding more jitter when round-off makes it indefinite."""
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    for scale in (1.0, 1e2, 1e4, 1e6):
        factor, info = torch.linalg.cholesky_ex(a + ridge * scale * eye)
        if int(info) == 0:
            return factor
    raise FloatingPointError("Gram block is not positive definite even with jitter")
