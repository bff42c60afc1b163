"""prunekit: prune convolutional networks for real, and measure what each method buys.

    import prunekit
    model = prunekit.models.create("resnet18", num_classes=10, small_input=True)
    x = torch.randn(1, 3, 32, 32)
    result = prunekit.prune(model, method="l1_filter", target="macs=0.5", example_inputs=x)
    print(result.before.macs, result.after.macs, result.achieved)
    prunekit.save(result.model, "pruned.pt")
    same = prunekit.load("pruned.pt")
"""

from prunekit._version import __version__
from prunekit import models  # noqa: F401  (prunekit.models.create, list_models)
from prunekit import tasks  # noqa: F401  (prunekit.tasks.create, list_tasks)
from prunekit.api import PruneResult, prune
from prunekit.io import export_onnx, load, save
from prunekit.errors import UserError
from prunekit.metrics import Measurement, measure, netscore
from prunekit.targets import Target

#: submodules reachable as attributes of `prunekit` (imported on first use: torch.utils.benchmark,
#: pydantic, the training loop and the data readers cost time that `import prunekit` should not)
SUBMODULES = (
    "allocation", "api", "bench", "channel_multiple", "data", "errors", "experiment", "io", "latency_search", "lowrank",
    "masks", "methods", "metrics", "models", "planner", "recipe", "registry", "report", "runtimes", "structure", "study",
    "targets", "tasks", "train",
)


def __getattr__(name: str):  # PEP 562: `prunekit.bench.latency` works after a bare `import prunekit`
    if name in SUBMODULES:
        import importlib

        return importlib.import_module(f"prunekit.{name}")
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES))


__all__ = ["__version__", "models", "tasks", "save", "load", "export_onnx", "prune", "PruneResult", "measure", "Measurement", "netscore", "Target", "UserError"]
