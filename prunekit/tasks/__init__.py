"""Tasks: what a model is trained and judged on (see `prunekit.tasks.base`).

    prunekit.tasks.list_tasks()                 # ["classification", ...]
    task = prunekit.tasks.create("classification")
    task = prunekit.tasks.create("mypkg.tasks:Regression")   # a Task subclass from your own code
"""

from prunekit.tasks.base import TASKS, Metric, Task, call_model, create, list_tasks, output_layers, register, resolve
from prunekit.tasks import classification  # noqa: F401  (registers "classification")
from prunekit.tasks import detection  # noqa: F401  (registers "detection")

__all__ = ["TASKS", "Metric", "Task", "call_model", "create", "list_tasks", "output_layers", "register", "resolve"]
