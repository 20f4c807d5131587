"""`lnrt.models.train_nnunet`: a trained nnU-Net-shaped network written as a results folder that nnU-Net's
predictor and `lnrt export nnunet` read (issue 22's trained real-sized model uses it at full size)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("dynamic_network_architectures")

from lnrt.export.nnunet import import_nnunet  # noqa: E402
from lnrt.models import nnunet_folder as nf  # noqa: E402
from lnrt.models.train_nnunet import train  # noqa: E402
from lnrt.package import ModelPackage  # noqa: E402

TINY = nf.Shape((2.0, 1.0, 1.0), (16, 32, 32), (4, 8))


def test_trained_weights_reach_the_folder_and_the_package(tmp_path):
    folder = train(tmp_path / "run", 4, shape=TINY, patch=(16, 32, 32), pool_size=2, log_every=2)
    saved = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    torch.manual_seed(0)
    init = nf.network(nf.resolved(nf.plans(shape=TINY), "3d_fullres")).state_dict()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 4
    for k, v in ckpt["model"].items():  # the folder holds the trained weights, not a fresh network
        assert torch.equal(saved[k], v), k
    assert any(not torch.equal(init[k], saved[k]) for k in init if init[k].is_floating_point())
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [2, 4] and all(np.isfinite(r["loss"]) for r in log)
    # resuming continues the count; the package imported from the folder is that network
    train(tmp_path / "run", 6, shape=TINY, patch=(16, 32, 32), pool_size=2, log_every=2, resume=True)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["iteration"] == 6
    pkg = ModelPackage.load(import_nnunet(folder, tmp_path / "pkg"))
    assert pkg.manifest["input"]["patch_size_zyx"] == list(TINY.patch)


def test_shape_spacing_must_be_the_phantoms(tmp_path):
    with pytest.raises(ValueError, match="phantoms"):
        train(tmp_path / "run", 1, shape=nf.SMALL)
