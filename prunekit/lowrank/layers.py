"""The training form of a factorised layer: `SVDConv2d` / `SVDLinear` (parameters U, s, Vh, bias)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from prunekit.errors import UserError
from prunekit.lowrank.geometry import ConvGeometry, LinearGeometry, _Geometry
from prunekit.lowrank.rank import INITS, exact_svd, factorisable, orthogonality_penalty, saves_params


class _SVDLayer(nn.Module):
    """The training form: parameters `U` (m x r), `s` (r), `Vh` (r x n) and `bias`; W = U diag(s) Vh.

    The forward runs the two-layer form where it is cheaper (r (m + n) < m n) and otherwise one
    layer with the composed weight: both compute the same function.
    """

    geometry: _Geometry

    def _init_factors(self, rank: int, *, bias: bool) -> None:
        m, n = self.geometry.matrix_shape()
        if not 1 <= rank <= min(m, n):
            raise UserError(f"rank {rank} must be in [1, {min(m, n)}] for a {m} x {n} weight matrix")
        self.U = nn.Parameter(torch.empty(m, rank))
        self.s = nn.Parameter(torch.empty(rank))
        self.Vh = nn.Parameter(torch.empty(rank, n))
        out = self.geometry.out_features if isinstance(self.geometry, LinearGeometry) else self.geometry.out_channels
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None

    @property
    def rank(self) -> int:
        """The number of singular values kept."""
        return self.s.numel()

    @property
    def mode(self) -> str:
        return self.geometry.mode

    def matrix(self) -> torch.Tensor:
        """Return U diag(s) Vh, the weight as an m x n matrix."""
        return (self.U * self.s) @ self.Vh

    def dense_weight(self) -> torch.Tensor:
        """Return the composed weight in the plain layer's shape."""
        return self.geometry.dense_from_matrix(self.matrix())

    def factor_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (first, second) plain-layer weights of the two-layer form."""
        return self.geometry.first_from(self.s[:, None] * self.Vh), self.geometry.second_from(self.U)

    def saves_params(self) -> bool:
        """True when the two-layer form at the current rank has fewer weights than the dense layer."""
        m, n = self.geometry.matrix_shape()
        return saves_params(m, n, self.rank)

    def forward_factorised(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output computed by the two-layer form."""
        first, second = self.factor_weights()
        return self.geometry.run_pair(x, first, second, self.bias)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Return the output computed by one layer with the composed weight."""
        return self.geometry.run_dense(x, self.dense_weight(), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_factorised(x) if self.saves_params() else self.forward_dense(x)

    def orthogonality(self) -> torch.Tensor:
        """Return (||U^T U - I||_F^2 + ||Vh Vh^T - I||_F^2) / r^2 for this layer."""
        return orthogonality_penalty(self.U, self.Vh)

    @torch.no_grad()
    def set_from_weight(self, weight: torch.Tensor, *, init: str = "svd", generator: torch.Generator | None = None) -> None:
        """Initialise U, s, Vh from a plain `weight`: its SVD (exact at full rank) or random orthogonal factors.

        `init="random"`: U and Vh random with orthonormal columns / rows, s constant so that
        ||U diag(s) Vh||_F equals ||weight||_F (the plain layer's init scale).
        """
        r = self.rank
        if init == "svd":
            u, s, vh = exact_svd(self.geometry.matrix_from_dense(weight.detach()))
            u, s, vh = u[:, :r], s[:r], vh[:r]
        elif init == "random":
            u = torch.empty(self.U.shape, dtype=torch.float64)
            vh = torch.empty(self.Vh.shape, dtype=torch.float64)
            nn.init.orthogonal_(u, generator=generator)
            nn.init.orthogonal_(vh, generator=generator)
            s = torch.full((r,), float(weight.detach().double().norm()) / math.sqrt(r), dtype=torch.float64)
        else:
            raise UserError(f"init {init!r} is not one of {', '.join(INITS)}")
        for p, v in ((self.U, u), (self.s, s), (self.Vh, vh)):
            p.copy_(v.to(p.dtype))

    @torch.no_grad()
    def truncate_(self, rank: int) -> None:
        """Keep the `rank` singular values of largest |s| (and their vectors), in place."""
        if not 1 <= rank <= self.rank:
            raise UserError(f"rank {rank} must be in [1, {self.rank}]")
        order = torch.argsort(self.s.detach().abs(), descending=True)[:rank]
        self.U = nn.Parameter(self.U.detach()[:, order].clone())
        self.s = nn.Parameter(self.s.detach()[order].clone())
        self.Vh = nn.Parameter(self.Vh.detach()[order].clone())

    @torch.no_grad()
    def to_plain(self, *, form: str | None = None) -> nn.Module:
        """Return the plain equivalent: "pair" (nn.Sequential of two layers) or "dense" (one layer).

        Default: "pair" where it saves parameters, else "dense".
        """
        form = form or ("pair" if self.saves_params() else "dense")
        bias = self.bias is not None
        if form == "pair":
            plain = self.geometry.build_pair(self.rank, bias=bias)
            first, second = self.factor_weights()
            plain[0].weight.copy_(first)
            plain[1].weight.copy_(second)
            if bias:
                plain[1].bias.copy_(self.bias)
        elif form == "dense":
            plain = self.geometry.build_dense(bias=bias)
            plain.weight.copy_(self.dense_weight())
            if bias:
                plain.bias.copy_(self.bias)
        else:
            raise ValueError(f"form {form!r} is not pair or dense")
        return plain.to(device=self.U.device, dtype=self.U.dtype)


class SVDConv2d(_SVDLayer):
    """A Conv2d trained as U diag(s) Vh (`mode` "channel" or "spatial"); see the module docstring."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, *, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, bias: bool = True, mode: str = "channel", rank: int | None = None) -> None:
        super().__init__()
        self.geometry = ConvGeometry(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                     dilation=dilation, mode=mode)
        g = self.geometry
        self.in_channels, self.out_channels = g.in_channels, g.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = g.kernel_size, g.stride, g.padding, g.dilation
        self._init_factors(rank if rank is not None else min(g.matrix_shape()), bias=bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, mode: str = "channel", init: str = "svd", rank: int | None = None,
                  generator: torch.Generator | None = None) -> "SVDConv2d":
        """Return the factorised form of `conv` (full rank unless `rank`), on its device and dtype."""
        why = factorisable(conv)
        if why:
            raise UserError(f"cannot factorise this layer: {why}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None, mode=mode, rank=rank)
        layer.set_from_weight(conv.weight, init=init, generator=generator)
        if conv.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(conv.bias)
        return layer.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, mode={self.mode}, rank={self.rank}, bias={self.bias is not None}")


class SVDLinear(_SVDLayer):
    """A Linear layer trained as U diag(s) Vh."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, mode: str = "channel",
                 rank: int | None = None) -> None:
        super().__init__()
        self.geometry = LinearGeometry(in_features, out_features, mode=mode)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_factors(rank if rank is not None else min(in_features, out_features), bias=bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, mode: str = "channel", init: str = "svd", rank: int | None = None,
                    generator: torch.Generator | None = None) -> "SVDLinear":
        """Return the factorised form of `linear` (full rank unless `rank`), on its device and dtype."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, mode=mode, rank=rank)
        layer.set_from_weight(linear.weight, init=init, generator=generator)
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias)
        return layer.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, mode={self.mode}, rank={self.rank}, bias={self.bias is not None}"


SVD_TYPES = (SVDConv2d, SVDLinear)


def geometry_of(module: nn.Module, *, mode: str) -> _Geometry:
    """Return the geometry of a Conv2d/Linear or of a factorised layer, for `mode`."""
    if isinstance(module, (nn.Conv2d, SVDConv2d)):
        return ConvGeometry.of(module, mode=mode)
    if isinstance(module, (nn.Linear, SVDLinear)):
        return LinearGeometry.of(module, mode=mode)
    raise TypeError(f"no low-rank geometry for {type(module).__name__}")
