"""How a conv or linear weight is viewed as a matrix M, and the plain layers a rank-r factorisation
of M becomes (channel-wise and spatial-wise convs; linear)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import UserError
from prunekit.lowrank.rank import MODES, _pair


class _Geometry:
    """Shape bookkeeping shared by the conv and linear factorised layers."""

    mode: str

    def matrix_shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def dense_from_matrix(self, mat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def matrix_from_dense(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def first_from(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def second_from(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def build_pair(self, rank: int, *, bias: bool) -> nn.Sequential:
        raise NotImplementedError

    def build_dense(self, *, bias: bool) -> nn.Module:
        raise NotImplementedError


class ConvGeometry(_Geometry):
    """A Conv2d's geometry and the matrix view of its weight for `mode`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, *, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, mode: str = "channel") -> None:
        if mode not in MODES:
            raise UserError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = (0, 0) if padding == "valid" else _pair(padding)
        self.dilation = _pair(dilation)
        self.mode = mode

    @classmethod
    def of(cls, conv: nn.Module, *, mode: str) -> "ConvGeometry":
        """Return the geometry of `conv` (an nn.Conv2d or SVDConv2d)."""
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                   padding=conv.padding, dilation=conv.dilation, mode=mode)

    def matrix_shape(self) -> tuple[int, int]:
        (kh, kw), c, n_out = self.kernel_size, self.in_channels, self.out_channels
        if self.mode == "channel":
            return n_out, c * kh * kw
        return n_out * kw, c * kh

    def matrix_from_dense(self, weight: torch.Tensor) -> torch.Tensor:
        m, n = self.matrix_shape()
        if self.mode == "channel":
            return weight.reshape(m, n)
        return weight.permute(0, 3, 1, 2).reshape(m, n)

    def dense_from_matrix(self, mat: torch.Tensor) -> torch.Tensor:
        (kh, kw), c, n_out = self.kernel_size, self.in_channels, self.out_channels
        if self.mode == "channel":
            return mat.reshape(n_out, c, kh, kw)
        return mat.reshape(n_out, kw, c, kh).permute(0, 2, 3, 1)

    def first_from(self, a: torch.Tensor) -> torch.Tensor:
        (kh, kw), c = self.kernel_size, self.in_channels
        r = a.shape[0]
        if self.mode == "channel":
            return a.reshape(r, c, kh, kw)
        return a.reshape(r, c, kh, 1)

    def second_from(self, u: torch.Tensor) -> torch.Tensor:
        kw, n_out = self.kernel_size[1], self.out_channels
        r = u.shape[1]
        if self.mode == "channel":
            return u.reshape(n_out, r, 1, 1)
        return u.reshape(n_out, kw, r).permute(0, 2, 1).unsqueeze(2)

    def _first_args(self) -> dict[str, Any]:
        if self.mode == "channel":
            return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding, dilation=self.dilation)
        return dict(kernel_size=(self.kernel_size[0], 1), stride=(self.stride[0], 1),
                    padding=(self.padding[0], 0), dilation=(self.dilation[0], 1))

    def _second_args(self) -> dict[str, Any]:
        if self.mode == "channel":
            return dict(kernel_size=1)
        return dict(kernel_size=(1, self.kernel_size[1]), stride=(1, self.stride[1]),
                    padding=(0, self.padding[1]), dilation=(1, self.dilation[1]))

    def run_pair(self, x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Return the two-layer forward of `x` with the given factor weights."""
        a, b = self._first_args(), self._second_args()
        h = F.conv2d(x, first, None, a.get("stride", 1), a.get("padding", 0), a.get("dilation", 1))
        return F.conv2d(h, second, bias, b.get("stride", 1), b.get("padding", 0), b.get("dilation", 1))

    def run_dense(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Return the single-conv forward of `x` with the dense `weight`."""
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def build_pair(self, rank: int, *, bias: bool) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(self.in_channels, rank, bias=False, **self._first_args()),
            nn.Conv2d(rank, self.out_channels, bias=bias, **self._second_args()),
        )

    def build_dense(self, *, bias: bool) -> nn.Module:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, dilation=self.dilation, bias=bias)


class LinearGeometry(_Geometry):
    """A Linear layer's geometry; the matrix is its weight (out x in) in every mode."""

    def __init__(self, in_features: int, out_features: int, *, mode: str = "channel") -> None:
        if mode not in MODES:
            raise UserError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.in_features, self.out_features, self.mode = int(in_features), int(out_features), mode

    @classmethod
    def of(cls, linear: nn.Module, *, mode: str) -> "LinearGeometry":
        """Return the geometry of `linear` (an nn.Linear or SVDLinear)."""
        return cls(linear.in_features, linear.out_features, mode=mode)

    def matrix_shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    def matrix_from_dense(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def dense_from_matrix(self, mat: torch.Tensor) -> torch.Tensor:
        return mat

    def first_from(self, a: torch.Tensor) -> torch.Tensor:
        return a

    def second_from(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def run_pair(self, x: torch.Tensor, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Return the two-layer forward of `x` with the given factor weights."""
        return F.linear(F.linear(x, first), second, bias)

    def run_dense(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Return the single-layer forward of `x` with the dense `weight`."""
        return F.linear(x, weight, bias)

    def build_pair(self, rank: int, *, bias: bool) -> nn.Sequential:
        return nn.Sequential(nn.Linear(self.in_features, rank, bias=False), nn.Linear(rank, self.out_features, bias=bias))

    def build_dense(self, *, bias: bool) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features, bias=bias)
