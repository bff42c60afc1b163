"""Hardware-aware allocation with deterministic (mocked) timers: channel multiples, latency targets."""

import json
import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit import UserError, allocation, structure
from prunekit.allocation import LayerSpec


def _ceil(n: int, m: int) -> int:
    return -(-n // m) * m


class StairTimer:
    """A device whose kernels work in blocks of `multiple` channels: time = MACs of the padded layer.

    `overhead` adds a fixed share of the original model's time that no layer accounts for
    (norms, activations), which the allocation must discover by measuring the whole model.
    """

    batch_size = 1

    def __init__(self, multiple: int, *, overhead_ms: float = 0.0):
        self.multiple = multiple
        self.overhead_ms = overhead_ms
        self.layer_calls = 0

    def layer_ms(self, spec: LayerSpec) -> float:
        self.layer_calls += 1
        m = self.multiple
        if spec.groups > 1 and spec.groups == spec.in_channels == spec.out_channels:
            c = _ceil(spec.in_channels, m)
            return spec.with_channels(c, c, groups=c).macs() * 1e-6
        return spec.with_channels(_ceil(spec.in_channels, m), _ceil(spec.out_channels, m)).macs() * 1e-6

    def model_ms(self, model: nn.Module, example_inputs: torch.Tensor) -> float:
        shapes = {}
        hooks = [m.register_forward_hook(lambda mod, i, o: shapes.setdefault(mod, tuple(i[0].shape)) and None)
                 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            model.eval()(example_inputs)
        for h in hooks:
            h.remove()
        return self.overhead_ms + sum(self.layer_ms(LayerSpec.of(m, s, batch_size=1)) for m, s in shapes.items())


def _net(width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),           # 16x16: expensive channels
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),  # 8x8
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )


X = torch.zeros(1, 3, 16, 16)


@pytest.mark.parametrize("multiple", [8, 16, 32])
def test_channel_multiple_is_where_time_steps(multiple):
    assert allocation.measure_channel_multiple(timer=StairTimer(multiple), passes=1) == multiple


def test_smooth_time_means_no_multiple_and_env_pins_it(monkeypatch):
    assert allocation.measure_channel_multiple(timer=StairTimer(1), passes=1) <= 2
    monkeypatch.setenv(allocation.ENV_MULTIPLE, "8")
    timer = StairTimer(32)
    assert allocation.measure_channel_multiple(timer=timer) == 8 and timer.layer_calls == 0


def test_round_to_auto_is_the_default_and_yields_measured_multiples():
    model = _net(64)
    with allocation.use_timer(StairTimer(16)):
        result = prunekit.prune(model, method="l1_filter", target="macs=0.5", example_inputs=X)
    assert result.info["round_to"]["asked"] == "auto"
    assert result.info["round_to"]["measured"] == 16 and result.info["round_to"]["value"] == 16
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 16 == 0 for c in convs) and any(c.out_channels < 64 for c in convs)
    # a small model keeps a multiple that fits its smallest group (16 channels -> at most 4)
    small = _net(16)
    with allocation.use_timer(StairTimer(16)):
        choice = allocation.resolve_round_to("auto", model=small, example_inputs=X, target="macs=0.5")
    assert (choice.measured, choice.value) == (16, 4)
    # a channels target is an exact per-group fraction: auto does not round it
    assert allocation.resolve_round_to("auto", model=small, example_inputs=X, target="channels=0.3").value is None
    assert allocation.resolve_round_to(1, model=small, example_inputs=X).value is None


def test_latency_target_is_met_on_the_measured_time():
    model = _net(64)
    timer = StairTimer(8)
    before = timer.model_ms(model, X)
    with allocation.use_timer(timer):
        result = prunekit.prune(model, method="l1_filter", target="latency=0.5", example_inputs=X)
    after = timer.model_ms(result.model, X)
    report = result.info["latency"]
    assert after <= before * (0.5 + 0.02)
    assert report["before_ms"] == pytest.approx(before) and report["after_ms"] == pytest.approx(after)
    assert report["achieved"] == pytest.approx(1 - after / before)
    # the timer's layers add up to the model exactly here, so the first prediction is right
    assert len(report["attempts"]) == 1
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.out_channels != 64:
            assert m.out_channels % 8 == 0
    json.dumps(result.info)  # plain data for metrics.json


def test_latency_goal_is_recalibrated_when_layers_miss_time():
    model = _net(64)
    timer = StairTimer(8, overhead_ms=0.0)
    base = timer.model_ms(model, X)
    timer.overhead_ms = 0.4 * base  # time no layer accounts for (norms, activations)
    report = {}
    ones = lambda group: torch.ones(len(group[0].idxs))  # noqa: E731
    allocation.prune_to_latency(model, X, importance=ones, target=0.4, round_to=8, timer=timer, report=report)
    assert report["achieved"] >= 0.4 - 0.02
    assert len(report["attempts"]) >= 2  # the first, uncorrected prediction fell short


def test_channels_that_buy_more_time_go_first():
    # Equal importance everywhere; MACs per channel of each group (out of its conv + into the next):
    # "0": 3*9*256 + 64*9*64 = 43776, "3": 64*9*64 * 2 = 73728, "6": 64*9*64 + 10 = 36874.
    model = _net(64)
    report = {}
    ones = lambda group: torch.ones(len(group[0].idxs))  # noqa: E731
    allocation.prune_to_latency(model, X, importance=ones, target=0.3, round_to=8, timer=StairTimer(8), report=report)
    kept = report["kept"]
    assert kept["3"] < min(kept["0"], kept["6"]), kept
    # the step that crosses the goal is the smallest that does: the target is not overshot by a whole step
    assert 0.3 - 0.02 <= report["achieved"] <= 0.3 + 0.05


def test_profile_layers_attributes_time_to_layers():
    model = _net(16)
    rows, total = allocation.profile_layers(model, X, repeats=3, warmup=1)
    names = [r.name for r in rows]
    assert names[:3] == ["0", "1", "2"] and "11" in names
    # a layer's time is within its pass's time every pass, so its median is within the total's
    assert total > 0 and all(0 <= r.ms <= total + 1e-9 and r.share == pytest.approx(r.ms / total) for r in rows)


def test_analyze_latency_flag(capsys):
    from prunekit.cli.main import main

    assert main(["analyze", "resnet20", "--latency", "--json", "--repeats", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    convs = [r for r in out["layer_latency"] if r["kind"] == "Conv2d"]
    assert len(convs) == 19 and out["layer_latency_total_ms"] > 0


class FasterThanPredictedTimer(StairTimer):
    """Any pruned copy runs `factor` of what its layers add up to (the table overestimates it), so a
    plan built on the table alone removes more than the target needs."""

    def __init__(self, multiple: int, original: nn.Module, factor: float):
        super().__init__(multiple)
        self.original, self.factor = original, factor

    def model_ms(self, model: nn.Module, example_inputs: torch.Tensor) -> float:
        ms = super().model_ms(model, example_inputs)
        return ms if model is self.original else ms * self.factor


def test_latency_target_that_overshoots_is_searched_again_from_the_whole_model():
    model = _net(64)
    timer = FasterThanPredictedTimer(8, model, factor=0.6)
    report = {}
    ones = lambda group: torch.ones(len(group[0].idxs))  # noqa: E731
    allocation.prune_to_latency(model, X, importance=ones, target=0.5, round_to=8, timer=timer, report=report)
    first = report["attempts"][0]["achieved"]
    assert first > 0.5 + 0.05  # the table's plan overshoots: 1 - 0.6 * 0.5
    assert len(report["attempts"]) >= 2 and 0.5 - 0.02 <= report["achieved"] <= 0.5 + 0.05
    assert report["warning"] is None and report["macs_removed"] < report["attempts"][0]["macs_removed"]


def test_latency_target_still_overshot_after_every_attempt_is_a_warning():
    model = _net(64)
    timer = FasterThanPredictedTimer(8, model, factor=0.6)
    report = {}
    ones = lambda group: torch.ones(len(group[0].idxs))  # noqa: E731
    with pytest.warns(UserWarning, match="overshot"):
        allocation.prune_to_latency(model, X, importance=ones, target=0.5, round_to=8, timer=timer, report=report,
                                    max_attempts=1)
    assert report["achieved"] > 0.55 and "overshot" in report["warning"]


class SlowDepthwiseTimer(StairTimer):
    """Depthwise convs cost far more than their MACs (memory-bound kernels): 0.05 ms per channel."""

    def layer_ms(self, spec: LayerSpec) -> float:
        if spec.groups > 1 and spec.groups == spec.in_channels == spec.out_channels:
            return 0.05 * spec.in_channels
        return super().layer_ms(spec)


def _depthwise_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),        # "0": feeds the depthwise conv
        nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64), nn.ReLU(),                  # "6": a plain 1x1 output
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )


def test_time_allocation_meets_the_macs_target_with_the_channels_that_cost_most_time():
    timer = SlowDepthwiseTimer(1)
    results = {}
    for alloc in ("uniform", "time"):
        model = _depthwise_net()
        with allocation.use_timer(timer), pytest.warns(UserWarning, match="reached only within"):  # 2 groups, steps of 4
            r = prunekit.prune(model, method="l1_filter", target="macs=0.3", example_inputs=X, round_to=4, allocation=alloc)
        results[alloc] = (r, timer.model_ms(r.model, X))
    timed, uniform = results["time"], results["uniform"]
    assert timed[0].achieved["macs"] == pytest.approx(0.3, abs=0.02)  # two groups in steps of 4 channels
    assert timed[0].info["plan"]["allocation"] == "time"
    # the depthwise-feeding group goes first, so the same MACs buy more time
    assert timed[0].model[0].out_channels < uniform[0].model[0].out_channels
    assert timed[1] < uniform[1]
    with pytest.raises(UserError, match="allocation 'time' takes a macs= or params= target"):
        prunekit.prune(_depthwise_net(), method="l1_filter", target="channels=0.3", example_inputs=X, allocation="time")


@pytest.mark.parametrize("text", ["0", "-4", "eight", "4.5", ""])
def test_a_bad_pinned_multiple_or_round_to_is_one_line(text, monkeypatch):
    from prunekit import limits
    from prunekit.channel_multiple import pinned_multiple
    from prunekit.cli.prune_cmd import parse_round_to

    assert limits.positive_int_text(text) is None and limits.positive_int_text("16") == 16
    with pytest.raises(UserError, match="--round-to .* must be a positive integer or auto"):
        parse_round_to(text)
    monkeypatch.setenv(allocation.ENV_MULTIPLE, text)
    if text:  # an empty variable means "not pinned"
        with pytest.raises(UserError, match=f"{allocation.ENV_MULTIPLE}=.* must be a positive integer"):
            pinned_multiple()
    assert parse_round_to("auto") == "auto" and parse_round_to("8") == 8
