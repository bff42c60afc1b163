"""report.md says when pruned convs keep channel counts off the block fast kernels run."""

from prunekit.report import channel_block_note, render_markdown


def _conv(name, before, after):
    return {"name": name, "kind": "Conv2d", "out_channels_before": before, "out_channels_after": after}


def test_note_counts_only_pruned_convs_off_the_block():
    layers = [_conv("stem", 15, 15), _conv("a", 32, 15), _conv("b", 32, 24), _conv("c", 64, 33), _conv("d", 64, 1),
              _conv("e", 64, 9), {"name": "fc", "kind": "Linear", "out_channels_before": 10, "out_channels_after": 7}]
    text = "\n".join(channel_block_note(layers))
    # stem is odd but unpruned, fc is no conv: 4 of the 5 pruned convs are off 8
    assert "4 of the 5 convs whose outputs were pruned keep a count that is not a multiple of 8 (`a`, `c`, `d` and 1 more)" in text
    assert "`method.round_to: 8`" in text
    assert channel_block_note([_conv("a", 32, 16), _conv("b", 32, 32)]) == []
    assert channel_block_note(layers, block=1) == []
    # a hand-edited metrics.json: odd entries are skipped, the valid one still counted
    assert "1 of the 1 convs" in "\n".join(channel_block_note(["x", {"kind": "Conv2d", "out_channels_after": "15"}, _conv("a", 32, 15)]))


def test_report_carries_the_note_only_when_it_applies():
    metrics = {"status": "complete", "method": "slimming", "baseline": {"top1": 90.0}, "final": {"top1": 89.0},
               "layers": [_conv("a", 32, 15)]}
    assert "Channel counts: 1 of the 1 convs" in render_markdown(metrics)
    metrics["layers"] = [_conv("a", 32, 16)]
    assert "Channel counts" not in render_markdown(metrics)
