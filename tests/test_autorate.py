"""autorate (Sakai et al. 2022): the formulas against hand computation, rate choice, accept/reject."""

import copy
import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import UserError
from prunekit.methods import autorate as ar


def _tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


def _batches(n: int = 2, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# formulas


def test_sensitivity_and_loss_match_hand_computation():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -1.0, 0.3], [0.2, 0.4, -0.7]]))
    model = nn.Sequential(layer)
    # the third input feature is always 0, so its gradient column is exactly 0 (the 1e7 rule)
    x1 = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.5, 0.0]])
    x2 = torch.tensor([[0.3, -0.2, 0.0], [2.0, 1.0, 0.0], [0.1, 0.1, 0.0]])
    y1, y2 = torch.tensor([0, 1]), torch.tensor([1, 1, 0])
    loss, sens = ar.loss_and_sensitivities(model, [(x1, y1), (x2, y2)], layers={"0": layer})

    w = layer.weight.detach().double()

    def ce_and_grad(x, y):  # cross-entropy of a linear layer: dL/dW = (softmax - onehot)^T x / B
        x = x.double()
        z = x @ w.T
        p = torch.exp(z - torch.logsumexp(z, dim=1, keepdim=True))
        onehot = torch.nn.functional.one_hot(y, 2).double()
        loss = float(-(torch.log(p) * onehot).sum(1).mean())
        return loss, (p - onehot).T @ x / len(y)

    l1, g1 = ce_and_grad(x1, y1)
    l2, g2 = ce_and_grad(x2, y2)
    acc = g1.clone()
    acc[acc == 0] = 1e7
    s = float((1 / acc.abs()).sum())
    acc = acc + g2  # accumulated, never zeroed (the reference's loss.backward() without zero_grad)
    acc[acc == 0] = 1e7
    s += float((1 / acc.abs()).sum())
    assert loss == pytest.approx((l1 + l2) / 2, rel=1e-6)
    assert sens["0"] == pytest.approx(s / 2, rel=1e-6)
    # the zero column contributes 2 rows x 1e-7 per batch
    assert (g1[:, 2] == 0).all() and (g2[:, 2] == 0).all()
    assert layer.weight.grad is None  # the model's own gradients are left alone


def test_threshold_formula_and_scaling():
    th = ar.thresholds(loss_before=2.0, loss_after=1.5, loss_margin=0.1, sensitivities={"a": 10.0, "b": 4.0}, numels={"a": 100, "b": 8})
    assert th["a"] == pytest.approx((2.0 * 1.1 - 1.5) * 10 / 100)  # 0.07
    assert th["b"] == pytest.approx((2.0 * 1.1 - 1.5) * 4 / 8)  # 0.35
    norm = math.hypot(th["a"], th["b"])
    scaled = ar.scale_thresholds(th, sensitivities={"a": 10.0, "b": 4.0}, upper_bound=0.2)
    assert math.hypot(scaled["a"], scaled["b"]) == pytest.approx(0.2)
    assert scaled["a"] / scaled["b"] == pytest.approx(th["a"] / th["b"])
    assert ar.scale_thresholds(th, sensitivities={"a": 10.0, "b": 4.0}, upper_bound=norm * 1.01) == th


def test_candidate_rate_is_the_largest_under_the_threshold():
    # ten filters with L1 norms 1..10 (one weight each): error(r) = sum of the 10r smallest / 10
    weight = torch.tensor([3.0, -1.0, 7.0, 2.0, -10.0, 5.0, 4.0, -9.0, 6.0, 8.0]).view(10, 1, 1, 1)
    errors = {0.5: 15 / 10, 0.4: 10 / 10, 0.3: 6 / 10, 0.2: 3 / 10, 0.1: 1 / 10}
    for rate, err in errors.items():
        assert ar.pruning_error(weight, removed=round(rate * 10)) == pytest.approx(err)
    c = ar.choose_rate(weight, rates=ar.DEFAULT_RATES, threshold=0.65)
    assert (c.rate, c.removed, c.error) == (0.3, 3, pytest.approx(0.6))
    assert c.ediff_inc == pytest.approx(1.0 - 0.65)  # nearest rate above (0.4) needs th + 0.35
    assert c.ediff_dec == pytest.approx(0.65 - 0.6)
    top = ar.choose_rate(weight, rates=ar.DEFAULT_RATES, threshold=2.0)
    assert (top.rate, top.ediff_inc, top.ediff_dec) == (0.5, ar.NO_BOUND, pytest.approx(0.5))
    assert ar.choose_rate(weight, rates=ar.DEFAULT_RATES, threshold=0.05).rate == 0.0
    assert ar.choose_rate(torch.zeros(4, 2), rates=ar.DEFAULT_RATES, threshold=1.0).rate == 0.0
    # rounding: 0.3 of 10 removes 3, kept 7 -> 4 with round_to=4, so 6 go
    assert ar.removed_count(10, 0.3, round_to=4) == 6
    rounded = ar.choose_rate(weight, rates=(0.3, 0.0), threshold=2.2, round_to=4)
    assert (rounded.removed, rounded.error) == (6, pytest.approx(21 / 10))


def test_upper_bound_updates():
    th = {"a": 0.5, "b": 0.2}
    up = ar.update_upper_bound(1.0, accepted=True, ediffs={"a": 2.0, "b": 0.9}, thresholds=th, scaling_factor=2.0, limit=100)
    assert up == pytest.approx(1.0 * max(2.0, min(1 + 2.0 / 0.5, 1 + 0.9 / 0.2)))  # 5.0
    assert ar.update_upper_bound(1.0, accepted=True, ediffs={"a": 2.0}, thresholds=th, scaling_factor=2.0, limit=3.0) == 3.0
    down = ar.update_upper_bound(1.0, accepted=False, ediffs={"a": 0.1, "b": 0.15}, thresholds=th, scaling_factor=2.0, limit=100)
    assert down == pytest.approx(min(0.5, max(1 - 0.1 / 0.5, 1 - 0.15 / 0.2)))  # 0.5
    tight = ar.update_upper_bound(1.0, accepted=False, ediffs={"a": 0.45, "b": 0.19}, thresholds=th, scaling_factor=2.0, limit=100)
    assert tight == pytest.approx(1 - 0.45 / 0.5)  # 0.1


# ---------------------------------------------------------------------------------------------
# the search with fake trainers


class _FakeTrainer:
    def __init__(self, scores):
        self.scores = scores  # callable(model, call_index) -> top-1
        self.train_calls = 0
        self.eval_calls = 0

    def retrain(self, model):
        self.train_calls += 1

    def evaluate(self, model):
        self.eval_calls += 1
        return self.scores(model, self.eval_calls)


def test_accepted_rounds_keep_the_thinner_model():
    model = _tiny_cnn()
    reference = copy.deepcopy(model)
    x = torch.zeros(1, 3, 8, 8)
    fake = _FakeTrainer(lambda m, i: 90.0)  # never loses accuracy
    config = ar.AutoRateConfig(rounds=3, epochs_per_round=2, batches=2, acc_control=0.5)
    pruned, info = ar.search(model, x, batches=_batches(), retrain=fake.retrain, evaluate=fake.evaluate, config=config)
    rounds = info["rounds"]
    first = rounds[0]
    assert first["accepted"] is True and first["epochs"] == 1 and first["top1"] == [90.0]
    assert any(r > 0 for r in first["rates"].values())
    # the groups lost exactly what the chosen rates say (round(rate * 16) channels)
    kept0 = {"0": 16, "3": 16}
    for name, rate in first["rates"].items():
        assert first["removed"][name] == round(rate * kept0[name])
    assert pruned[0].out_channels == 16 - first["removed"]["0"] - sum(r["removed"]["0"] for r in rounds[1:] if r.get("accepted"))
    assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    # the caller's model is untouched; the trajectory records every accepted model
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    accepted = [r for r in rounds if r.get("accepted")]
    assert [t["round"] for t in info["trajectory"]] == [0] + [r["round"] for r in accepted]
    assert info["trajectory"][-1]["params"] == prunekit.measure(pruned, x).params
    assert info["trajectory"][-1]["params"] < info["trajectory"][0]["params"]
    # accepted: the bound grows (capped by the limit the first round starts at)
    if len(rounds) > 1:
        assert rounds[1]["upper_bound"] >= rounds[0]["upper_bound"] * 0.999


def test_rejected_rounds_restore_the_model_and_lower_the_bound():
    model = _tiny_cnn()
    x = torch.zeros(1, 3, 8, 8)
    fake = _FakeTrainer(lambda m, i: 90.0 if i == 1 else 80.0)  # baseline 90, every candidate 80
    config = ar.AutoRateConfig(rounds=4, epochs_per_round=3, batches=2, acc_control=1.0)
    pruned, info = ar.search(model, x, batches=_batches(), retrain=fake.retrain, evaluate=fake.evaluate, config=config)
    assert pruned is model  # nothing accepted: the original model comes back
    tried = [r for r in info["rounds"] if r["accepted"] is not None]
    assert tried and all(r["accepted"] is False for r in tried)
    retrained = [r for r in tried if r["epochs"]]
    assert retrained and all(r["epochs"] == 3 and r["top1"] == [80.0] * 3 for r in retrained)
    assert fake.train_calls == 3 * len(retrained)
    # a candidate identical to a rejected one is rejected again without retraining
    seen = {}
    for r in tried:
        key = tuple(sorted(r["removed"].items()))
        assert (r["epochs"] == 0) == (key in seen), r
        seen.setdefault(key, r["round"])
    bounds = [r["upper_bound"] for r in info["rounds"]]
    for before, after in zip(bounds, bounds[1:]):
        assert after <= before / 2 + 1e-12  # rejected: x min(1/2, ...)
    assert info["trajectory"] == info["trajectory"][:1]
    assert info["final_top1"] == 90.0


def test_budget_and_target_through_the_prune_api(tmp_path):
    model = _tiny_cnn()
    x = torch.zeros(1, 3, 8, 8)
    fake = _FakeTrainer(lambda m, i: 90.0)
    result = prunekit.prune(
        model, method="autorate", target="accuracy_drop=0.5", example_inputs=x, data=_batches(),
        retrain=fake.retrain, evaluate=fake.evaluate, rounds=5, epochs_per_round=2, max_epochs=2, batches=2,
        plot_dir=str(tmp_path),
    )
    info = result.info
    assert info["config"]["acc_control"] == 0.5
    assert info["epochs"] == 2 and info["stopped"] in ("max_epochs", "all rates are 0")
    assert result.after.params < result.before.params
    assert (tmp_path / "autorate_rates.png").stat().st_size > 1000
    with pytest.raises(UserError, match="retrain= and evaluate="):
        prunekit.prune(_tiny_cnn(), method="autorate", target="accuracy_drop=1", example_inputs=x, data=_batches())
    with pytest.raises(UserError, match="group_rate"):
        prunekit.prune(_tiny_cnn(), method="autorate", target="accuracy_drop=1", example_inputs=x, data=_batches(), group_rate="max")


def test_search_record_survives_a_checkpoint(tmp_path):
    model = _tiny_cnn()
    fake = _FakeTrainer(lambda m, i: 90.0)
    method = prunekit.methods.create("autorate", target="accuracy_drop=1", rounds=1, epochs_per_round=1, batches=1,
                                     retrain=fake.retrain, evaluate=fake.evaluate)
    method.finalize(model, example_inputs=torch.zeros(1, 3, 8, 8), data=_batches(1))
    torch.save(method.state_dict(), tmp_path / "state.pt")
    fresh = prunekit.methods.create("autorate", target="accuracy_drop=1")
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert fresh.info["rounds"] == method.info["rounds"] and fresh.info["trajectory"] == method.info["trajectory"]
