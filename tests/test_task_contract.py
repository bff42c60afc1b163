"""The method x task contract: every registered method prunes a tiny model of every task through
`prunekit.prune`, and no structural change ever alters an output shape (heads of a detector-like
model are protected even when they are not the last layer run)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit import methods, structure, tasks
from prunekit.errors import UserError

ANCHORS = 3


class TwoHeadNet(nn.Module):
    """Detector-like toy: class and box heads per position; the box head's context conv runs after
    the class head, and neither head is the last layer a 'last layer run' rule would find alone."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.cls = nn.Conv2d(16, ANCHORS * 2, 1)
        self.context = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.box = nn.Conv2d(16, ANCHORS * 4, 1)

    def forward(self, x):
        f = self.mid(self.stem(x))
        n = x.shape[0]
        c = self.cls(f).permute(0, 2, 3, 1).reshape(n, -1, 2)
        b = self.box(self.context(f)).permute(0, 2, 3, 1).reshape(n, -1, 4)
        return c, b


class TwoHeadTask(tasks.Task):
    """Test-only detection-like task: batches are (images, {"labels": (N, A), "boxes": (N, A, 4)});
    losses are a class cross-entropy and a smooth-L1 box loss; the primary metric is the mean loss."""

    name = "two_head_test"
    primary = tasks.Metric("loss", unit="nats", higher_is_better=False)

    def losses(self, outputs, batch):
        cls, box = outputs
        y = self.targets(batch)
        # the only cross-entropy outside prunekit/tasks/ lives in this test's own task
        return {"cls": F.cross_entropy(cls.reshape(-1, 2), y["labels"].reshape(-1)),
                "box": F.smooth_l1_loss(box, y["boxes"])}

    @torch.no_grad()
    def evaluate(self, model, loader, *, device="cpu", amp=True, max_batches=None):
        total, n = 0.0, 0
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            batch = self.to_device(batch, device)
            total += float(sum(self.loss(model, batch).values())) * self.batch_size(batch)
            n += self.batch_size(batch)
        return {"loss": total / n}


def _classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )


def _setting(task):
    """Return (model, example inputs, batches) of a tiny model for `task`."""
    gen = torch.Generator().manual_seed(0)
    if isinstance(task, TwoHeadTask):
        torch.manual_seed(0)
        model = TwoHeadNet()
        batches = [(torch.randn(4, 3, 8, 8, generator=gen),
                    {"labels": torch.randint(0, 2, (4, 64 * ANCHORS), generator=gen),
                     "boxes": torch.randn(4, 64 * ANCHORS, 4, generator=gen)}) for _ in range(2)]
    elif task.name == "detection":
        torch.manual_seed(0)
        model = prunekit.models.create("retinaface_mnet025", landmarks=False)
        target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 44.0]]), "labels": torch.ones(1, dtype=torch.long)}
        batches = [(torch.randn(2, 3, 64, 64, generator=gen), [dict(target), dict(target)]) for _ in range(2)]
    else:
        model = _classifier()
        batches = [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen)) for _ in range(2)]
    return model, batches[0][0][:2], batches


def _options(name, task):
    """The target and options each method is exercised with (small and fast)."""
    if name == "autorate":
        def evaluate(model):
            return {task.primary.name: 0.0}  # a metrics dict: autorate takes the primary value
        return "accuracy_drop=1", {"retrain": lambda m: m, "evaluate": evaluate, "rounds": 2,
                                   "epochs_per_round": 1, "batches": 1}
    targets = {
        "magnitude": "sparsity=0.5", "snip": "sparsity=0.5", "grasp": "sparsity=0.5", "synflow": "sparsity=0.5",
        "snip_channel": "macs=0.3", "slimming": "channels=0.3", "sfp": "channels=0.3", "double": "channels=0.3",
        "svd": "params=0.1", "l1_filter": "macs=0.5", "l2_filter": "macs=0.5", "random": "macs=0.5",
        "tp_group_l2": "macs=0.5", "none": None,
    }
    options = {"synflow": {"rounds": 2}, "l1_filter": {"round_to": 1}, "l2_filter": {"round_to": 1},
               "random": {"round_to": 1}}
    if name not in targets:
        pytest.fail(f"method {name!r} is registered but the contract test does not know how to run it: add it")
    return targets[name], dict(options.get(name, {}))


TASKS = [*tasks.list_tasks(), "two_head"]


def _task(name):
    return TwoHeadTask() if name == "two_head" else tasks.create(name)


# prunekit's own methods (other test modules register throwaway methods of their own)
OWN_METHODS = [n for n in methods.list_methods() if methods.METHODS.get(n).__module__.startswith("prunekit.")]


@pytest.mark.parametrize("task_name", TASKS)
@pytest.mark.parametrize("method", OWN_METHODS)
def test_every_method_prunes_every_task_and_keeps_protected_outputs(method, task_name):
    task = _task(task_name)
    model, x, batches = _setting(task)
    target, options = _options(method, task)
    heads = {structure.module_names(model)[m]: getattr(m, "out_channels", getattr(m, "out_features", None))
             for m in task.protected(model, x)}
    shapes = structure.output_shapes(model, x)
    round_to = options.pop("round_to", None)
    result = prunekit.prune(model, method=method, target=target, example_inputs=x, task=task, data=batches,
                            round_to=round_to, **options)
    assert structure.output_shapes(result.model, x) == shapes
    after = structure.out_sizes(result.model, list(heads))
    assert after == heads, f"{method} changed a protected module's output size"
    assert result.after.params <= result.before.params
    kind = methods.METHODS.get(method).kind
    if kind in ("structured", "composite", "lowrank") and method != "autorate":
        assert result.after.params < result.before.params, f"{method} removed nothing"
    if kind == "unstructured":
        assert result.after.nonzero_params < result.before.nonzero_params


def test_two_head_task_protects_both_heads_and_trains_on_summed_losses():
    task = TwoHeadTask()
    model, x, batches = _setting(task)
    assert set(task.protected(model, x)) == {model.cls, model.box}
    losses = task.loss(model, batches[0])
    assert set(losses) == {"cls", "box"} and all(v.dim() == 0 for v in losses.values())


DATA_FREE_STRUCTURED = ["l1_filter", "l2_filter", "random", "slimming", "sfp", "double", "svd"]


@pytest.mark.parametrize("method", DATA_FREE_STRUCTURED)
def test_default_task_protects_heads_that_are_not_the_last_layer(method):
    """Without a task (classification by default) every output layer is still protected: the old
    rule ('the last layer run') would have cut the class head of this model."""
    torch.manual_seed(0)
    model = TwoHeadNet()
    x = torch.randn(2, 3, 8, 8)
    shapes = structure.output_shapes(model, x)
    target, options = _options(method, tasks.create("classification"))
    if method in ("l1_filter", "l2_filter", "random"):
        target = "macs=0.5"  # whole-model structured pruning at half the MACs
    result = prunekit.prune(model, method=method, target=target, example_inputs=x, **options)
    assert structure.output_shapes(result.model, x) == shapes
    assert structure.out_sizes(result.model, ["cls", "box"]) == {"cls": ANCHORS * 2, "box": ANCHORS * 4}
    assert result.after.params < result.before.params


def test_an_unprotected_head_is_a_user_error_naming_it_not_a_silent_shape_change():
    torch.manual_seed(0)
    model = TwoHeadNet()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UserError, match=r"output size of .*(cls|box)"):
        structure.remove_channels(copy.deepcopy(model), x, importance=structure.MagnitudeImportance(), ratio=0.5,
                                  protected=["stem.0"])
    with pytest.raises(UserError, match="not a module of the model"):
        structure.channel_groups(model, x, protected=["no.such.layer"])


class TwoInputs(nn.Module):
    """A model with two positional inputs: an image and a vector."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.vec = nn.Linear(5, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, image, vector):
        return self.head(self.conv(image) + self.vec(vector))


def test_tuple_example_inputs_measure_prune_time_and_replay():
    from prunekit import bench, metrics

    torch.manual_seed(0)
    model = TwoInputs()
    x = (torch.randn(2, 3, 8, 8), torch.randn(2, 5))
    before = metrics.measure(model, x)
    # per sample, by formula: two 3x3 convs at 8x8, the vector's linear and the head
    assert before.macs == 16 * 64 * 3 * 9 + 16 * 64 * 16 * 9 + 5 * 16 + 16 * 3
    result = prunekit.prune(model, method="l1_filter", target="channels=0.5", example_inputs=x, round_to=1)
    assert result.after.params < before.params
    assert result.model(*x).shape == (2, 3)
    op = result.model.prunekit_ops[-1]
    assert op["input_shapes"] == [[3, 8, 8], [5]] and "input_shape" not in op
    fresh = structure.replay_prune(TwoInputs(), op)
    assert structure.kept_channels(fresh) == structure.kept_channels(result.model)
    assert bench.latency(result.model, x, repeats=2, warmup=1) > 0
    for method, target in (("sfp", "channels=0.3"), ("svd", "params=0.1"), ("synflow", "sparsity=0.5")):
        options = {"rounds": 2} if method == "synflow" else {}
        pruned = prunekit.prune(TwoInputs(), method=method, target=target, example_inputs=x, **options)
        assert pruned.model(*x).shape == (2, 3)


def test_prune_passes_task_and_log_through_setup():
    lines: list[str] = []
    task = TwoHeadTask()
    model, x, batches = _setting(task)
    target, options = _options("autorate", task)
    result = prunekit.prune(model, method="autorate", target=target, example_inputs=x, task=task, data=batches,
                            log=lines.append, **options)
    assert lines and lines[0].startswith("autorate: baseline loss")
    assert result.info["metric"] == "loss"
