"""`none`: no pruning. The dense reference of a study, trained with the same stages and budget.

A study that compares pruned runs with "the same network, not pruned, trained the same way" (the
sparsity-0 point of a grid) runs this method: `method.train` and `finetune` train as for any
other method, and nothing is removed or zeroed. It takes no target and no options.
"""

from __future__ import annotations

from prunekit.errors import UserError
from prunekit.methods.base import Method, register


@register
class NoPruning(Method):
    name = "none"
    kind = "none"
    units = ()
    description = "no pruning: the dense reference run, trained like the pruned ones (sparsity 0 of a study)"

    def __init__(self, *, target=None, **kwargs) -> None:
        if target is not None:
            raise UserError(f"method 'none' prunes nothing and takes no target (got {target}); drop method.target")
        super().__init__(target=None, **kwargs)
