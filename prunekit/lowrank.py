"""SVD-factorised conv and linear layers (Yang et al., CVPRW 2020): W = U diag(s) Vh.

A layer's weight is viewed as a matrix M (m x n) and trained as three tensors: `U` (m x r),
`s` (r) and `Vh` (r x n), whose rows are the right singular vectors (torch.linalg.svd's
naming). Two views of a conv weight W (N x C x kh x kw):

- channel-wise (`mode="channel"`): M = W.reshape(N, C kh kw); the factors are a kh x kw conv
  C->r (weight diag(s) Vh) followed by a 1 x 1 conv r->N (weight U, plus the bias);
- spatial-wise (`mode="spatial"`): M[(N, kw), (C, kh)] = W[N, C, kh, kw]; the factors are a
  kh x 1 conv C->r followed by a 1 x kw conv r->N. Stride, padding and dilation split by axis,
  so the pair computes exactly the original conv.

A linear layer is M = W (out x in) in both modes: Linear in->r then Linear r->out.

Three forms of a factorised layer, all plain data in `model.prunekit_ops` ({"op": "lowrank"}),
replayed by `prunekit.load`:

- "svd": the training form (`SVDConv2d` / `SVDLinear`: parameters U, s, Vh, bias);
- "pair": two plain layers in an `nn.Sequential` (first carries diag(s) Vh, second U and bias);
- "dense": one plain layer holding the low-rank weight U diag(s) Vh (used where the pair would
  not save parameters: r (m + n) >= m n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import UserError
from prunekit.replays import register_replay

MODES = ("channel", "spatial")
INITS = ("svd", "random")
SPARSITY_PENALTIES = ("l1", "hoyer", "hoyer_square")
FORMS = ("svd", "pair", "dense")

_EPS = 1e-12


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def factorisable(module: nn.Module) -> str | None:
    """Return why `module` cannot be factorised, or None when it can (a Conv2d or Linear)."""
    if isinstance(module, nn.Linear):
        return None
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__} is not a Conv2d or Linear"
    if module.groups != 1:
        return f"grouped conv (groups={module.groups})"
    if module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r} (only zeros)"
    if isinstance(module.padding, str) and module.padding != "valid":
        return f"padding={module.padding!r} (give numbers)"
    return None


def pair_params(m: int, n: int, rank: int) -> int:
    """Return the weight count of the two-layer form of an m x n matrix at `rank` (bias not counted)."""
    return rank * (m + n)


def saves_params(m: int, n: int, rank: int) -> bool:
    """Return True when the two-layer form at `rank` has fewer weights than the dense m x n layer."""
    return pair_params(m, n, rank) < m * n


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Return the fewest singular values (largest |s| first) whose sum of squares holds >= `energy` of the total.

    `energy` is the KEPT fraction of sum s^2, in (0, 1]; at least 1 is kept.
    """
    if not 0.0 < energy <= 1.0:
        raise UserError(f"energy={energy} must be in (0, 1]: the fraction of sum s^2 kept")
    sq = torch.sort(s.detach().cpu().double().abs(), descending=True).values ** 2
    total = float(sq.sum())
    if total <= 0.0:
        return 1
    cum = torch.cumsum(sq, 0)
    # a relative slack of 1e-9 so that an energy exactly on a boundary keeps that boundary's count
    need = energy * total * (1.0 - 1e-9)
    k = int(torch.searchsorted(cum, torch.tensor(need, dtype=cum.dtype)).item()) + 1
    return max(1, min(k, s.numel()))


def sparsity_penalty(s: torch.Tensor, kind: str) -> torch.Tensor:
    """Return R(s): "l1" ||s||_1, "hoyer" ||s||_1 / ||s||_2, or "hoyer_square" ||s||_1^2 / ||s||_2^2 (unitless)."""
    a = s.abs()
    if kind == "l1":
        return a.sum()
    l2sq = (s * s).sum() + _EPS
    if kind == "hoyer":
        return a.sum() / l2sq.sqrt()
    if kind == "hoyer_square":
        return a.sum() ** 2 / l2sq
    raise UserError(f"sparsity penalty {kind!r} is not one of {', '.join(SPARSITY_PENALTIES)}")


def orthogonality_penalty(u: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """Return (||U^T U - I||_F^2 + ||Vh Vh^T - I||_F^2) / r^2 for U (m x r) and Vh (r x n)."""
    r = u.shape[1]
    eye = torch.eye(r, device=u.device, dtype=u.dtype)
    return (((u.T @ u) - eye).pow(2).sum() + ((vh @ vh.T) - eye).pow(2).sum()) / (r * r)


def exact_svd(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the thin SVD (U, s, Vh) of `mat` in float64, on its device."""
    mat = mat.to(torch.float64)
    threads = torch.get_num_threads()
    if mat.device.type == "cpu":
        # LAPACK's threaded SVD stalls on a busy CPU (measured on 2 shared cores: 20 SVDs of
        # 576 x 64 took 11 s with 2 threads, 0.1 s with 1); layer-sized matrices gain little from threads.
        torch.set_num_threads(1)
    try:
        if mat.shape[0] < mat.shape[1]:
            # LAPACK is several times faster on the tall orientation: SVD the transpose and swap.
            u, s, vh = torch.linalg.svd(mat.T, full_matrices=False)
            return vh.T, s, u.T
        return torch.linalg.svd(mat, full_matrices=False)
    finally:
        torch.set_num_threads(threads)


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


def geometry_of(module: nn.Module, *, mode: str) -> _Geometry:
    """Return the geometry of a Conv2d/Linear or of a factorised layer, for `mode`."""
    if isinstance(module, (nn.Conv2d, SVDConv2d)):
        return ConvGeometry.of(module, mode=mode)
    if isinstance(module, (nn.Linear, SVDLinear)):
        return LinearGeometry.of(module, mode=mode)
    raise TypeError(f"no low-rank geometry for {type(module).__name__}")


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


# ------------------------------------------------------------------------------------------- models

def svd_layers(model: nn.Module) -> dict[str, _SVDLayer]:
    """Return the factorised (training-form) layers of `model` by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SVD_TYPES)}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _record(model: nn.Module, layers: list[dict[str, Any]]) -> None:
    if layers:
        model.prunekit_ops = [*getattr(model, "prunekit_ops", []), {"op": "lowrank", "layers": layers}]


def factorise(model: nn.Module, *, mode: str = "channel", init: str = "svd", skip: Sequence[nn.Module] = (),
              seed: int = 0) -> dict[str, str]:
    """Replace every factorisable Conv2d and Linear of `model` (in place) by its full-rank training form.

    `skip` lists modules to leave as they are. Returns {name: why} for the conv/linear layers
    left dense (grouped convs, non-zero padding modes, `skip`). The change is recorded on
    `model.prunekit_ops` so that `prunekit.save` / `load` rebuild it.
    """
    if mode not in MODES:
        raise UserError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if init not in INITS:
        raise UserError(f"init {init!r} is not one of {', '.join(INITS)}")
    gen = torch.Generator().manual_seed(seed)
    skipped_ids = {id(m) for m in skip}
    left: dict[str, str] = {}
    done: list[dict[str, Any]] = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or isinstance(module, SVD_TYPES):
            continue
        why = "ignored" if id(module) in skipped_ids else factorisable(module)
        if why:
            left[name] = why
            continue
        if isinstance(module, nn.Linear):
            new = SVDLinear.from_linear(module, mode=mode, init=init, generator=gen)
        else:
            new = SVDConv2d.from_conv(module, mode=mode, init=init, generator=gen)
        new.train(module.training)
        _set_module(model, name, new)
        done.append({"name": name, "form": "svd", "mode": mode, "rank": new.rank})
    _record(model, done)
    return left


def truncate(model: nn.Module, *, ranks: dict[str, int]) -> None:
    """Truncate the named factorised layers of `model` to the given ranks, in place."""
    layers = svd_layers(model)
    for name, r in ranks.items():
        layers[name].truncate_(r)
    _record(model, [{"name": n, "form": "svd", "mode": layers[n].mode, "rank": int(r)} for n, r in ranks.items()])


def to_plain(model: nn.Module, *, form: str | None = None) -> dict[str, dict[str, Any]]:
    """Replace every factorised layer of `model` by plain modules (in place): by default the pair where
    it saves parameters, else one dense layer with the low-rank weight; `form` ("pair" or "dense")
    forces one form.

    Returns {name: {"mode", "rank", "form"}} and records the change on `model.prunekit_ops`.
    """
    done: list[dict[str, Any]] = []
    forced = form
    for name, layer in svd_layers(model).items():
        form = forced or ("pair" if layer.saves_params() else "dense")
        plain = layer.to_plain(form=form)
        plain.train(layer.training)
        _set_module(model, name, plain)
        done.append({"name": name, "form": form, "mode": layer.mode, "rank": layer.rank})
    _record(model, done)
    return {d["name"]: {k: d[k] for k in ("mode", "rank", "form")} for d in done}


@torch.no_grad()
def layer_shapes(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Return {name: (input shape, output shape)} of the factorised layers for one eval forward of `example_inputs`."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = [layer.register_forward_hook(lambda mod, i, o, name=name: shapes.__setitem__(name, (i[0].shape, o.shape)))
             for name, layer in svd_layers(model).items()]
    was_training = model.training
    model.eval()
    try:
        model(example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def plain_cost(layer: nn.Module, rank: int, *, in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, int]:
    """Return (weights, MACs per sample) of the plain form `to_plain` gives `layer` at `rank` (bias not counted).

    MACs follow prunekit.metrics: output elements x inputs per output. The spatial pair's first
    conv runs at the output height and the input width.
    """
    m, n = layer.geometry.matrix_shape()
    batch = int(out_shape[0])
    if isinstance(layer.geometry, LinearGeometry):
        positions = math.prod(out_shape) // (batch * layer.geometry.out_features)
    else:
        positions = int(out_shape[-2]) * int(out_shape[-1])
    if not saves_params(m, n, rank):
        return m * n, m * n * positions
    if isinstance(layer.geometry, ConvGeometry) and layer.mode == "spatial":
        return pair_params(m, n, rank), rank * n * int(out_shape[-2]) * int(in_shape[-1]) + rank * m * positions
    return pair_params(m, n, rank), pair_params(m, n, rank) * positions


def regularizer(model: nn.Module, *, lambda_o: float, lambda_s: float, penalty: str = "hoyer") -> torch.Tensor | None:
    """Return lambda_o * sum_l orthogonality_l + lambda_s * sum_l R(s_l) over the factorised layers (None if none)."""
    layers = list(svd_layers(model).values())
    if not layers:
        return None
    total = layers[0].s.new_zeros(())
    for layer in layers:
        if lambda_o:
            total = total + lambda_o * layer.orthogonality()
        if lambda_s:
            total = total + lambda_s * sparsity_penalty(layer.s, penalty)
    return total


def pair_orthogonality(first: nn.Module, second: nn.Module) -> torch.Tensor:
    """Return the orthogonality penalty of a plain pair, read as U diag(s) Vh.

    U is the second layer's weight (its rank-index columns); s_i and the rows of Vh are the norms
    and directions of the first layer's rank-index rows. This is the same quantity as
    `orthogonality_penalty` for the factorisation the pair computes.
    """
    r = first.weight.shape[0]
    a = first.weight.reshape(r, -1)
    vh = a / a.norm(dim=1, keepdim=True).clamp_min(_EPS)
    u = second.weight.transpose(0, 1).reshape(r, -1).T
    return orthogonality_penalty(u, vh)


def factored_pairs(model: nn.Module) -> dict[str, nn.Sequential]:
    """Return the plain pairs that lowrank ops of `model.prunekit_ops` left in place, by name."""
    names: dict[str, str] = {}
    for op in getattr(model, "prunekit_ops", []):
        if op.get("op") == "lowrank":
            for entry in op["layers"]:
                names[entry["name"]] = entry["form"]
    out = {}
    for name, form in names.items():
        if form != "pair":
            continue
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Sequential) and len(module) == 2:
            out[name] = module
    return out


# ------------------------------------------------------------------------------------------- replay

def replay_lowrank(model: nn.Module, op: dict[str, Any]) -> nn.Module:
    """Re-apply a recorded "lowrank" op on a freshly built model (used by `prunekit.load`); return it.

    Each entry names a layer, its form ("svd", "pair" or "dense"), mode and rank; the layer's
    geometry is read from the module found there (plain or training form).
    """
    for entry in op["layers"]:
        name, form, mode, rank = entry["name"], entry["form"], entry["mode"], int(entry["rank"])
        module = model.get_submodule(name)
        bias = module.bias is not None
        g = geometry_of(module, mode=mode)
        if form == "svd":
            if isinstance(g, ConvGeometry):
                new = SVDConv2d(g.in_channels, g.out_channels, g.kernel_size, stride=g.stride, padding=g.padding,
                                dilation=g.dilation, bias=bias, mode=mode, rank=rank)
            else:
                new = SVDLinear(g.in_features, g.out_features, bias=bias, mode=mode, rank=rank)
        elif form == "pair":
            new = g.build_pair(rank, bias=bias)
        elif form == "dense":
            if not isinstance(module, SVD_TYPES):
                continue  # a plain layer already has the dense layer's shape
            new = g.build_dense(bias=bias)
        else:
            raise UserError(f"lowrank op: form {form!r} is not one of {', '.join(FORMS)}")
        _set_module(model, name, new)
    return model



register_replay("lowrank", replay_lowrank)  # `prunekit.io.load` replays the recorded ops
