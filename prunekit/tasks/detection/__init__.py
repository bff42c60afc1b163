"""Face detection: priors, matching and MultiBox loss, decoding with NMS, the WIDER FACE protocol.

    task = prunekit.tasks.create("detection")        # RetinaFace priors (cfg_mnet)
    losses = task.loss(model, batch)                   # {"box", "cls", "landmark"}
    metrics = task.evaluate(model, loader)             # {"ap_easy", "ap_medium", "ap_hard", ...}
"""

from prunekit.tasks.detection.task import Detection

__all__ = ["Detection"]
