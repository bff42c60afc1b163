"""Magnitude pruning schedules: one-shot, iterative rounds and gradual (AGP, cubic) step by step."""

import pytest
import torch
from torch import nn

import prunekit
from prunekit import masks, methods
from prunekit.errors import UserError


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 5))


def n_weights(m: nn.Module) -> int:
    return sum(l.weight_orig.numel() if masks.is_masked(l) else l.weight.numel() for l in (m[0], m[3]))


def n_zeros(m: nn.Module) -> int:
    return sum(int((masks.weight_of(l) == 0).sum()) for l in (m[0], m[3]))


def train_a_little(m: nn.Module, seed: int) -> None:
    """Stand-in for an epoch of training: move every live weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for l in (m[0], m[3]):
            p = l.weight_orig if masks.is_masked(l) else l.weight
            p.add_(0.05 * torch.randn(p.shape, generator=g))


X = torch.randn(1, 3, 8, 8)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_oneshot_is_exact_and_keeps_largest(scope):
    m = model()
    before = {k: l.weight.detach().abs().clone() for k, l in (("0", m[0]), ("3", m[3]))}
    r = prunekit.prune(m, method="magnitude", target="sparsity=0.6", example_inputs=X, scope=scope)
    if scope == "global":
        assert n_zeros(r.model) == round(0.6 * n_weights(r.model))
        kept = torch.cat([before[k][masks.get_masks(r.model)[k] > 0] for k in before])
        gone = torch.cat([before[k][masks.get_masks(r.model)[k] == 0] for k in before])
        assert kept.min() >= gone.max()
    else:
        for l in (r.model[0], r.model[3]):
            assert int((masks.weight_of(l) == 0).sum()) == round(0.6 * l.weight_orig.numel())


def test_agp_follows_the_cubic_formula_epoch_by_epoch():
    s_i, s_f, t0, t_end, dt = 0.1, 0.8, 1, 7, 2
    method = methods.create("magnitude", target=f"sparsity={s_f}", schedule="gradual", start_epoch=t0,
                            end_epoch=t_end, frequency=dt, initial_sparsity=s_i)
    m = model()
    n = n_weights(m)
    m = method.at_init(m, example_inputs=X)
    assert n_zeros(m) == 0  # t = 0 is before start_epoch
    expected = 0.0
    for epoch in range(10):
        train_a_little(m, epoch)
        before_masks = masks.get_masks(m)
        method.after_epoch(m, epoch=epoch)
        t = epoch + 1  # completed epochs
        if t0 <= t <= t_end and (t - t0) % dt == 0:
            # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with n dt = t_end - t0
            expected = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3
        assert n_zeros(m) == round(expected * n), f"after epoch {epoch}"
        for k, old in before_masks.items():  # a weight once pruned stays pruned
            assert bool((masks.get_masks(m)[k][old == 0] == 0).all())
    assert expected == s_f
    log = [(e["epochs_done"], round(e["sparsity"], 6)) for e in method.info["schedule_log"]]
    assert log == [(1, 0.1), (3, round(0.8 - 0.7 * (2 / 3) ** 3, 6)), (5, round(0.8 - 0.7 * (1 / 3) ** 3, 6)), (7, 0.8)]
    method.finalize(m, example_inputs=X)
    assert n_zeros(m) == round(s_f * n)


def test_iterative_reaches_target_after_k_rounds():
    k, per, s = 3, 2, 0.875
    method = methods.create("magnitude", target=f"sparsity={s}", schedule="iterative", rounds=k, epochs_per_round=per)
    m = model()
    n = n_weights(m)
    m = method.at_init(m, example_inputs=X)
    assert n_zeros(m) == round(0.5 * n)  # round 1: 1 - (1 - 0.875)^(1/3) = 0.5
    seen = [0.5]
    for epoch in range(k * per):
        train_a_little(m, epoch)
        method.after_epoch(m, epoch=epoch)
        seen.append(n_zeros(m) / n)
    # rounds 2 and 3 after 2 and 4 epochs: 1 - 0.5^2 = 0.75, 1 - 0.5^3 = 0.875; the last 2 epochs retrain
    assert [round(v, 2) for v in seen] == [0.5, 0.5, 0.75, 0.75, 0.88, 0.88, 0.88]
    assert n_zeros(m) == round(s * n)
    assert method.state_dict()["rounds_done"] == k
    method.finalize(m, example_inputs=X)
    assert n_zeros(m) == round(s * n) and method.info["rounds_done"] == k


def test_finalize_reaches_target_when_training_was_short_and_options_are_checked():
    method = methods.create("magnitude", target="sparsity=0.5", schedule="gradual", end_epoch=10)
    m = method.at_init(model(), example_inputs=X)
    method.after_epoch(m, epoch=0)
    method.finalize(m, example_inputs=X)
    assert n_zeros(m) == round(0.5 * n_weights(m))
    with pytest.raises(UserError, match="end_epoch"):
        methods.create("magnitude", target="sparsity=0.5", schedule="gradual")
    with pytest.raises(UserError, match="multiple of frequency"):
        methods.create("magnitude", target="sparsity=0.5", schedule="gradual", end_epoch=5, frequency=2)
    with pytest.raises(UserError, match="oneshot, iterative, gradual"):
        methods.create("magnitude", target="sparsity=0.5", schedule="cubic")


def test_method_none_prunes_nothing_and_takes_no_target():
    import prunekit
    from prunekit import methods
    from prunekit.errors import UserError

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    m = methods.create("none")
    before = [p.detach().clone() for p in model.parameters()]
    out = m.finalize(m.at_init(model, example_inputs=torch.zeros(1, 3, 8, 8)), example_inputs=torch.zeros(1, 3, 8, 8))
    assert all(torch.equal(a, b) for a, b in zip(before, out.parameters()))
    with pytest.raises(UserError, match="takes no target"):
        methods.create("none", target="macs=0.5")
    assert "none" in prunekit.methods.list_methods()
