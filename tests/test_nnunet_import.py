"""nnU-Net v2 import: lnrt's output must match nnU-Net's own predictor on the same CT (Dice >= 0.99)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("dynamic_network_architectures")

import nnunet_folder as nf  # noqa: E402

import lnrt  # noqa: E402
from lnrt.errors import LnrtError  # noqa: E402
from lnrt.export.nnunet import import_nnunet, manifest_fields, read_folder  # noqa: E402
from lnrt.models.neck import make_spec, render  # noqa: E402
from lnrt.package import ModelPackage  # noqa: E402
from lnrt.volume import Volume  # noqa: E402


@pytest.fixture(scope="module")
def scan():
    hu, _, origin = render(make_spec(30001), tuple(nf.SPACING), fov_xy=(150.0, 120.0))
    return hu.astype(np.float32), origin


def _nnunet_prediction(folder, hu, folds):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(key, str(folder))
    predictor_mod = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    pred = predictor_mod.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                         device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    return pred.predict_single_npy_array(hu[None], {"spacing": list(nf.SPACING)})


@pytest.mark.parametrize("transpose", [(0, 1, 2), (1, 2, 0)])
def test_import_matches_nnunets_own_predictor(tmp_path, scan, transpose):
    hu, origin = scan
    folds = (0, 1)
    folder = nf.make_folder(tmp_path / "results", folds=folds, transpose=transpose, probe=hu)
    pkg_dir = import_nnunet(folder, tmp_path / "pkg")
    pkg = ModelPackage.load(pkg_dir)
    m = pkg.manifest
    assert m["input"]["spacing_zyx_mm"] == nf.SPACING and m["input"]["patch_size_zyx"] == nf.PATCH
    assert m["normalization"] == {"scheme": "ct_zscore", "clip_hu": [-150.0, 500.0], "mean": 60.0, "std": 120.0}
    assert m["classes"] == ["background", "lymph_node"]
    assert m["body_crop"] == {"enabled": False}  # InstanceNorm: tile exactly as nnU-Net does
    assert m["provenance"]["imported_from"]["folds"] == ["0", "1"]
    vol = Volume(hu, spacing=tuple(nf.SPACING[::-1]), origin=tuple(origin), direction=np.eye(3))
    ours = lnrt.Session(pkg, min_volume_mm3=0).run(vol).labels > 0
    theirs = _nnunet_prediction(folder, hu, folds) > 0
    assert 0.05 < theirs.mean() < 0.6  # a real mask, not trivially empty or full
    dice = 2 * np.count_nonzero(ours & theirs) / (np.count_nonzero(ours) + np.count_nonzero(theirs))
    assert dice >= 0.99, (dice, ours.mean(), theirs.mean())


def test_import_refusals(tmp_path, scan):
    with pytest.raises(LnrtError, match="not a folder"):
        import_nnunet(tmp_path / "nothing", tmp_path / "out")
    folder = nf.make_folder(tmp_path / "r", folds=(0,))
    with pytest.raises(LnrtError, match="no configuration '2d'"):
        read_folder(folder, configuration="2d")
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    torch.save({"weights": 1}, ckpt)
    with pytest.raises(LnrtError, match="network_weights"):
        read_folder(folder)
    torch.save(torch.nn.Conv3d(1, 1, 1), ckpt)  # a pickled module: never unpickled
    with pytest.raises(LnrtError, match="weights_only"):
        read_folder(folder)
    folder = nf.make_folder(tmp_path / "r2", folds=(0,))
    ds = json.loads((folder / "dataset.json").read_text())
    ds["channel_names"] = {"0": "CT", "1": "PET"}
    (folder / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(LnrtError, match="2 input channels"):
        manifest_fields(read_folder(folder))
    (folder / "plans.json").unlink()
    with pytest.raises(LnrtError, match="plans.json: missing"):
        read_folder(folder)
