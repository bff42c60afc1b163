"""Magnitude pruning (Han et al. 2015): zero the weights of smallest |w|, globally or per layer.

Schedules (option `schedule`):

- `oneshot` (default): `finalize` zeroes the target fraction at once.
- `iterative` (Han et al. 2015: prune, retrain, repeat): `rounds` rounds of
  `epochs_per_round` epochs inside the method's training stage. Round k (1-based) prunes to
  s_k = 1 - (1 - s)^(k / rounds) (each round removes the same fraction of the weights still alive)
  and happens at `at_init` for k = 1, then in `after_epoch` once (k - 1) * epochs_per_round
  epochs are done; the training after each round retrains. Train rounds * epochs_per_round epochs.
- `gradual` (AGP, Zhu & Gupta 2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 at
  t = t0, t0 + dt, ..., t0 + n dt, where t counts COMPLETED EPOCHS (updated in `after_epoch`;
  t = 0 is `at_init`), t0 = `start_epoch`, t0 + n dt = `end_epoch`, dt = `frequency` epochs,
  s_i = `initial_sparsity` (default 0) and s_f the target.

Whatever the schedule, `finalize` makes sure the target is reached (a run that trained fewer
epochs than the schedule needs is pruned to the target there). Masks hold through training (a
weight once zeroed stays zero: scores are the masked |w|). Unstructured: the zeros cut non-zero
parameters and non-zero MACs, not dense latency.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit import masks
from prunekit.errors import UserError
from prunekit.methods.base import Batches, Method, register

SCHEDULES = ("oneshot", "iterative", "gradual")


def agp_sparsity(t: float, *, initial: float, final: float, start: float, end: float) -> float:
    """Return the AGP sparsity (fraction zeroed) at time `t` (Zhu & Gupta 2017, cubic).

    Before `start` it is `initial`, after `end` it is `final`; `t`, `start`, `end` share one unit.
    """
    if t <= start:
        return initial
    if t >= end:
        return final
    return final + (initial - final) * (1.0 - (t - start) / (end - start)) ** 3


def iterative_sparsity(k: int, *, final: float, rounds: int) -> float:
    """Return the sparsity after round `k` of `rounds`: 1 - (1 - final)^(k / rounds)."""
    if k >= rounds:
        return final
    return 1.0 - (1.0 - final) ** (k / rounds)


def _int_option(key: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"method 'magnitude': {key}={value!r} must be an integer >= {low}")
    return value


@register
class Magnitude(Method):
    name = "magnitude"
    kind = "unstructured"
    units = ("sparsity",)
    description = "zero the smallest-|w| weights, global or per layer; one-shot, iterative or gradual AGP (Han et al. 2015; Zhu & Gupta 2017)"

    def configure(
        self,
        *,
        scope: str = "global",
        exclude: tuple[str, ...] | list[str] | str = (),
        schedule: str = "oneshot",
        rounds: int = 3,
        epochs_per_round: int = 1,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        frequency: int = 1,
        initial_sparsity: float = 0.0,
        **options: Any,
    ) -> dict[str, Any]:
        if scope not in ("global", "layer"):
            raise UserError(f"method 'magnitude': scope {scope!r} is not one of global, layer")
        if schedule not in SCHEDULES:
            raise UserError(f"method 'magnitude': schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
        opts: dict[str, Any] = {"scope": scope, "exclude": masks.exclude_globs(exclude, self.name), "schedule": schedule}
        if schedule == "iterative":
            opts["rounds"] = _int_option("rounds", rounds, low=1)
            opts["epochs_per_round"] = _int_option("epochs_per_round", epochs_per_round, low=1)
        if schedule == "gradual":
            if end_epoch is None:
                raise UserError("method 'magnitude': schedule gradual needs end_epoch (the epoch count at which the target is reached)")
            start = _int_option("start_epoch", start_epoch, low=0)
            end = _int_option("end_epoch", end_epoch, low=start + 1)
            freq = _int_option("frequency", frequency, low=1)
            if (end - start) % freq:
                raise UserError(f"method 'magnitude': end_epoch - start_epoch = {end - start} must be a multiple of frequency={freq}")
            try:
                s_i = float(initial_sparsity)
            except (TypeError, ValueError):
                s_i = -1.0
            if not 0.0 <= s_i < 1.0:
                raise UserError(f"method 'magnitude': initial_sparsity={initial_sparsity!r} must be in [0, 1)")
            opts.update(start_epoch=start, end_epoch=end, frequency=freq, initial_sparsity=s_i)
        self._sparsity = 0.0  # what the masks zero now
        self._rounds_done = 0
        return {**opts, **super().configure(**options)}

    # -------------------------------------------------------------------------------------------
    def prune_to(self, model: nn.Module, sparsity: float) -> None:
        """Mask `model` so that a `sparsity` fraction of its prunable weights is zero."""
        layers = masks.prunable_layers(model, exclude=self.options["exclude"] + tuple(i for i in self.ignore if isinstance(i, str)))
        scores = {name: masks.weight_of(m).detach().abs() for name, m in layers.items()}
        masks.apply_masks(model, masks.masks_from_scores(scores, sparsity=sparsity, scope=self.options["scope"]))
        self._sparsity = sparsity

    def _final(self) -> float:
        if self.target is None:
            raise UserError("method 'magnitude' needs a target, e.g. sparsity=0.9")
        return self.target.value

    def schedule_at(self, completed_epochs: int) -> float | None:
        """Return the sparsity the schedule sets once `completed_epochs` epochs are done (0 = at_init), or None."""
        o, t = self.options, completed_epochs
        if o["schedule"] == "iterative":
            if t % o["epochs_per_round"] == 0 and t // o["epochs_per_round"] < o["rounds"]:
                return iterative_sparsity(t // o["epochs_per_round"] + 1, final=self._final(), rounds=o["rounds"])
            return None
        if o["schedule"] == "gradual":
            start, end, freq = o["start_epoch"], o["end_epoch"], o["frequency"]
            if start <= t <= end and (t - start) % freq == 0:
                return agp_sparsity(t, initial=o["initial_sparsity"], final=self._final(), start=start, end=end)
        return None

    def _step(self, model: nn.Module, completed_epochs: int) -> None:
        s = self.schedule_at(completed_epochs)
        if s is None:
            return
        if self.options["schedule"] == "iterative":
            self._rounds_done += 1
        if s > 0 or masks.get_masks(model):
            self.prune_to(model, s)
        self.info.setdefault("schedule_log", []).append({"epochs_done": completed_epochs, "sparsity": s})

    # hooks -------------------------------------------------------------------------------------
    def at_init(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        if self.options["schedule"] != "oneshot":
            self._step(model, 0)
        return model

    def after_epoch(self, model: nn.Module, *, epoch: int) -> None:
        if self.options["schedule"] != "oneshot":
            self._step(model, epoch + 1)

    def finalize(self, model: nn.Module, *, example_inputs: torch.Tensor, data: Batches | None = None) -> nn.Module:
        final = self._final()
        if self.options["schedule"] == "oneshot" or self._sparsity < final or not masks.get_masks(model):
            self.prune_to(model, final)
        self.info.update({"schedule": self.options["schedule"], "sparsity": self._sparsity})
        if self.options["schedule"] == "iterative":
            self.info["rounds_done"] = self._rounds_done
        return model

    # resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"sparsity": self._sparsity, "rounds_done": self._rounds_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sparsity = float(state.get("sparsity", 0.0))
        self._rounds_done = int(state.get("rounds_done", 0))
