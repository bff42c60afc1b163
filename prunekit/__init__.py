"""prunekit: prune convolutional networks for real, and measure what each method buys."""

from prunekit._version import __version__

__all__ = ["__version__"]
