"""Pruning methods, registered by name (`list_methods()`, `create(name, **options)`)."""

from prunekit.methods.base import METHODS, Method, MethodContext, create, list_methods, register

# Importing a method module registers its methods.
from prunekit.methods import structured_baselines  # noqa: E402,F401  l1_filter, l2_filter, random
from prunekit.methods import magnitude  # noqa: E402,F401
from prunekit.methods import slimming  # noqa: E402,F401  network slimming
from prunekit.methods import snip  # noqa: E402,F401  snip, snip_channel, grasp, synflow
from prunekit.methods import double  # noqa: E402,F401  slimming then magnitude
from prunekit.methods import sfp  # noqa: E402,F401  soft filter pruning
from prunekit.methods import svd  # noqa: E402,F401  SVD low-rank training
from prunekit.methods import autorate  # noqa: E402,F401  automatic per-layer rates (Sakai et al.)
from prunekit.methods import dense  # noqa: E402,F401  none: the dense reference

__all__ = ["METHODS", "Method", "MethodContext", "create", "list_methods", "register"]
