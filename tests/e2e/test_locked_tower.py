"""--lock-image on a pretrained CNN tower: its outputs are computed once per training product and
stored; a second run with the same --image-cache reads them (warm); the tower's weights come out
of training as they went in."""

from __future__ import annotations

import torch

from attrx.cli import main

FAST = ["--config", "small-effnet", "--lock-image", "--warmup-epochs", "0", "--e2e-epochs", "1", "--tune-epochs", "0",
        "--batch-size", "32", "--threads", "2"]


def test_a_locked_tower_is_computed_once_and_read_warm_after(demo_catalog, tmp_path, capsys):
    from attrx.training.models.checkpoint import load_checkpoint
    from attrx.training.models.efficientnet_lite import pretrained

    cache = tmp_path / "cache"
    base = ["train", str(demo_catalog), "--attributes", "colour,pattern", "--image-cache", str(cache),
            *FAST]
    main([*base, "--out", str(tmp_path / "a")])
    first = capsys.readouterr().out
    assert "locked image tower: its outputs for" in first and "computed once" in first
    assert len(list(cache.glob("features-*.f16"))) == 1
    main([*base, "--out", str(tmp_path / "b")])
    assert "read from the cache" in capsys.readouterr().out
    ref = pretrained().state_dict()
    got = load_checkpoint(tmp_path / "b").model.vision.net.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)  # locked: BatchNorm statistics included
    assert not (tmp_path / "b" / ".features").exists()
