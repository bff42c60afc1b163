"""`none`: the dense reference. Prunes nothing, so a recipe with it is a baseline-only run.

A study's sparsity-0 point and a results table's shared starting point are runs like every other
(same data, same budget, same report), with this method in the method slot.
"""

from __future__ import annotations

from prunekit.methods.base import Method, register


@register
class Dense(Method):
    name = "none"
    kind = "none"
    units = ()
    description = "prune nothing: the dense reference run (baselines, a study's 0 point)"
