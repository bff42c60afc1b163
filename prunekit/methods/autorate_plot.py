"""autorate's plot: the rate of every group per round, and the params / MACs / metric trajectory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


# --------------------------------------------------------------------------------------------
# the plot


def plot_rates(info: dict[str, Any], path: str | Path) -> Path:
    """Write a PNG of the rate chosen per group at every round, and the params/MACs/top-1 trajectory; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunekit.io import atomic_write

    rounds = [r for r in info["rounds"] if r.get("rates")]
    names: list[str] = []
    for r in rounds:
        names.extend(n for n in r["rates"] if n not in names)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    if rounds and names:
        grid = [[r["rates"].get(n, float("nan")) for n in names] for r in rounds]
        image = ax1.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=max(info["config"]["rates"]) or 1, interpolation="nearest")
        ax1.set_yticks(range(len(rounds)))
        ax1.set_yticklabels([f"{r['round']} {'ok' if r.get('accepted') else ('end' if r.get('accepted') is None else 'no')}" for r in rounds], fontsize=7)
        step = max(1, len(names) // 40)
        ax1.set_xticks(range(0, len(names), step))
        ax1.set_xticklabels(names[::step], rotation=90, fontsize=6)
        fig.colorbar(image, ax=ax1, label="pruning rate of the round")
    ax1.set_title("rate per layer group and round (ok = accepted)")
    ax1.set_ylabel("round")
    traj = info["trajectory"]
    xs = [t["round"] for t in traj]
    p0, m0 = traj[0]["params"], traj[0]["macs"]
    ax2.plot(xs, [t["params"] / p0 for t in traj], "o-", label="params (fraction of baseline)")
    ax2.plot(xs, [t["macs"] / m0 for t in traj], "s-", label="MACs (fraction of baseline)")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("round (accepted models)")
    ax3 = ax2.twinx()
    ax3.plot(xs, [t["top1"] for t in traj], "^--", color="tab:red", label="top-1 %")
    ax3.set_ylabel("top-1 (%)")
    lines = ax2.get_legend_handles_labels()
    lines3 = ax3.get_legend_handles_labels()
    ax2.legend(lines[0] + lines3[0], lines[1] + lines3[1], fontsize=7, loc="lower left")
    ax2.set_title("trajectory")
    fig.tight_layout()
    path = Path(path)
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path
