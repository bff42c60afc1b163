"""Double pruning (the Inha seed): network slimming (structured), then magnitude pruning (unstructured).

A composite method: `stages = [slimming, magnitude]`. The experiment runner runs each stage in
order (at_init -> training with its hooks -> finalize -> fine-tune) and records params, MACs,
top-1 and NetScore after each. The one-shot form (`prunekit.prune`) runs slimming's at_init and
finalize, then magnitude's, on the slim network.

Options: `slimming_target` (default "channels=0.5"), `magnitude_target` (default "sparsity=0.5"),
`slimming: {...}` and `magnitude: {...}` (each stage's own options). A method-level `target`
sets the stage its unit belongs to: sparsity -> magnitude, channels/params/macs -> slimming.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register
from prunekit.methods.magnitude import Magnitude
from prunekit.methods.slimming import Slimming
from prunekit.targets import Target


@register
class Double(Method):
    name = "double"
    kind = "composite"  # structured stage, then unstructured stage
    units = ("channels", "params", "macs", "sparsity")
    description = "network slimming, then magnitude pruning on the slim network; NetScore after each stage (Inha seed)"

    def configure(
        self,
        *,
        slimming_target: str | Target | None = None,
        magnitude_target: str | Target | None = None,
        slimming: dict[str, Any] | None = None,
        magnitude: dict[str, Any] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        for key, value in (("slimming", slimming), ("magnitude", magnitude)):
            if value is not None and not isinstance(value, dict):
                raise UserError(f"method 'double': option {key} must be a mapping of that stage's options, got {value!r}")
            for k in ("target", "ignore", "round_to") if key == "slimming" else ("target", "ignore"):
                if k in (value or {}):  # the stage gets these from the method: they would be given twice
                    where = f"{key}_target" if k == "target" else f"the method's {k}"
                    raise UserError(f"method 'double': option {key} may not set {k} (give it as {where})")
        targets = {"slimming": slimming_target, "magnitude": magnitude_target}
        if self.target is not None:
            stage = "magnitude" if self.target.unit == "sparsity" else "slimming"
            given = targets[stage]
            if given is not None and Target.parse(given) != self.target:
                raise UserError(f"method 'double': target {self.target} and {stage}_target={given} disagree; give one of them")
            targets[stage] = self.target
        targets = {k: Target.parse(v) for k, v in {"slimming": targets["slimming"] or "channels=0.5",
                                                   "magnitude": targets["magnitude"] or "sparsity=0.5"}.items()}
        super().configure(**options)
        self.stages: list[Method] = [
            Slimming(target=targets["slimming"], ignore=self.ignore, round_to=self.round_to, **(slimming or {})),
            Magnitude(target=targets["magnitude"], ignore=self.ignore, **(magnitude or {})),
        ]
        return {"slimming_target": str(targets["slimming"]), "magnitude_target": str(targets["magnitude"]),
                "slimming": dict(slimming or {}), "magnitude": dict(magnitude or {})}

    # one-shot form: stage 1's at_init here, its finalize and all of stage 2 in finalize.
    def at_init(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        return self.stages[0].at_init(model, example_inputs=example_inputs, data=data)

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        model = self.stages[0].finalize(model, example_inputs=example_inputs, data=data)
        model = self.stages[1].at_init(model, example_inputs=example_inputs, data=data)
        model = self.stages[1].finalize(model, example_inputs=example_inputs, data=data)
        self.info["stages"] = [{"method": s.name, "target": str(s.target), **s.info} for s in self.stages]
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"stages": [s.state_dict() for s in self.stages]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, st in zip(self.stages, state.get("stages", [])):
            s.load_state_dict(st)
