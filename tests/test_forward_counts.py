"""Pruning's bookkeeping runs the model no more often than it must (issue 15's overhead): the planner
reads the output layers and output shapes from Torch-Pruning's one trace, the surgery runs one
forward to check the outputs, `prune` checks shapes on the forwards that measure; and the garbage
collector pause is re-entrant and restores what it found."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import prunekit
from prunekit import UserError, metrics, structure
from prunekit.gcpause import paused_gc
from prunekit.planner import ChannelPlanner


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))


def _count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_planner_traces_once_and_protects_the_output_layer_from_that_trace():
    model, x = _net(), torch.randn(1, 3, 8, 8)
    calls = _count_forwards(model)
    planner = ChannelPlanner(model, x)
    assert calls[0] == 1  # Torch-Pruning's trace; no second forward for the output layers
    assert planner.protected == ["8"]  # the Linear classifier, found by the graph walk on that trace
    assert planner.graph.prunekit_output_shapes == [(1, 5)]
    scores = structure.group_scores(planner, structure.MagnitudeImportance(p=1))
    plan = planner.plan(scores, unit="macs", value=0.5)
    calls[0] = 0
    structure.remove_planned(model, x, planner=planner, plan=plan, scores=scores)
    assert calls[0] == 0  # every output layer traced and protected: their sizes decide the output shapes
    assert model(x).shape == (1, 5) and model[0].out_channels < 16


def test_surgery_runs_the_model_to_check_outputs_when_an_output_layer_is_not_protected():
    model, x = _net(), torch.randn(1, 3, 8, 8)
    planner = ChannelPlanner(model, x, protected=["8"])  # the same layer, named by the caller
    scores = structure.group_scores(planner, structure.MagnitudeImportance(p=1))
    calls = _count_forwards(model)
    structure.remove_planned(model, x, planner=planner, plan=planner.plan(scores, unit="macs", value=0.5), scores=scores)
    assert calls[0] == 0
    other, x = _net(), torch.randn(1, 3, 8, 8)
    planner = ChannelPlanner(other, x, protected=["0"])  # the classifier left unprotected
    scores = structure.group_scores(planner, structure.MagnitudeImportance(p=1))
    calls = _count_forwards(other)
    with pytest.raises(UserError, match="would change the output size of an output fed by 8"):
        structure.remove_planned(other, x, planner=planner, plan=planner.plan(scores, unit="macs", value=0.5), scores=scores)
    assert calls[0] >= 1  # not every output layer is protected: a forward checks the output shapes, and caught it


def test_measurement_records_output_shapes_and_prune_checks_them_without_extra_forwards():
    model, x = _net(), torch.randn(2, 3, 8, 8)
    assert metrics.measure(model, x).output_shapes == ((2, 5),)
    calls = _count_forwards(model)
    prunekit.prune(model, method="l1_filter", target="macs=0.5", example_inputs=x)
    # measure before and after, the planner's trace, the surgery's check, the round_to measurement
    # is not asked (default none for prune); nothing else runs the whole model
    assert calls[0] <= 4


def test_paused_gc_is_reentrant_and_restores_the_state():
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()
