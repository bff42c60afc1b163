"""Pruning targets that say what they mean: a unit and the fraction REMOVED in that unit."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.errors import UserError

#: unit -> what the fraction means
UNITS: dict[str, str] = {
    "channels": "fraction of channels removed per prunable group",
    "params": "fraction of parameters removed",
    "macs": "fraction of multiply-accumulates removed",
    "sparsity": "fraction of prunable weights zeroed (unstructured)",
    "latency": "fraction of measured latency removed on this device",
    "accuracy_drop": "top-1 percentage points allowed to be lost (automatic rates)",
}


@dataclass(frozen=True)
class Target:
    """A target: `unit` (one of `UNITS`) and `value`, the fraction removed (in (0, 1)).

    `accuracy_drop` is the exception: its value is in percentage points (> 0).
    """

    unit: str
    value: float

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise UserError(f"unknown target unit {self.unit!r} (allowed: {', '.join(UNITS)})")
        try:
            value = float(self.value)
        except (TypeError, ValueError):
            raise UserError(f"target {self.unit}={self.value!r}: the value is not a number") from None
        if self.unit == "accuracy_drop":
            if not 0 < value < float("inf"):
                raise UserError(f"target accuracy_drop={self.value} must be a finite number > 0 (percentage points)")
        elif not 0.0 < value < 1.0:
            raise UserError(
                f"target {self.unit}={self.value} is outside (0, 1): it is the fraction removed"
            )
        object.__setattr__(self, "value", value)

    @classmethod
    def parse(cls, text: "str | Target") -> "Target":
        """Return the `Target` for a string such as ``"macs=0.5"`` (a `Target` passes through)."""
        if isinstance(text, Target):
            return text
        if not isinstance(text, str) or "=" not in text:
            raise UserError(f"target {text!r} is not UNIT=FRACTION (units: {', '.join(UNITS)})")
        unit, _, raw = text.partition("=")
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"target {text!r}: {raw!r} is not a number") from None
        return cls(unit.strip(), value)

    def __str__(self) -> str:
        return f"{self.unit}={self.value:g}"
