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

from prunekit.lowrank.rank import (  # noqa: F401
    FORMS, INITS, MODES, SPARSITY_PENALTIES, exact_svd, factorisable, orthogonality_penalty, pair_params,
    rank_for_energy, saves_params, sparsity_penalty,
)
from prunekit.lowrank.geometry import ConvGeometry, LinearGeometry  # noqa: F401
from prunekit.lowrank.layers import SVD_TYPES, SVDConv2d, SVDLinear, geometry_of  # noqa: F401
from prunekit.lowrank.model import (  # noqa: F401
    factored_pairs, factorise, layer_shapes, pair_orthogonality, plain_cost, regularizer, replay_lowrank, svd_layers,
    to_plain, truncate,
)
from prunekit.replays import register_replay

register_replay("lowrank", replay_lowrank)  # `prunekit.io.load` replays the recorded ops
