"""The CLI end to end on the bundled sample, and the API behaviours it exposes."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import geometry_of

import lnrt
from lnrt import outputs

SAMPLE = lnrt.sample_path()
TRUTH = str(SAMPLE).replace(".nii.gz", ".truth.nii.gz")


def test_infer_writes_the_three_outputs(tmp_path, run_cli, capsys):
    """The README's quick start: the embedded default model on the bundled sample."""
    assert run_cli("infer", SAMPLE, "--out", tmp_path) == 0
    out = capsys.readouterr().out
    stem = "sample_neck_phantom"
    labels, report, table = (tmp_path / f"{stem}{s}" for s in (".nodes.nii.gz", ".report.json", ".nodes.csv"))
    assert labels.is_file() and report.is_file() and table.is_file()
    assert geometry_of(labels) == geometry_of(SAMPLE)
    rep = json.loads(report.read_text())
    assert rep["schema"] == "lnrt.report/1"
    pkg = lnrt.ModelPackage.load()
    from lnrt.backends import available
    assert rep["model"]["name"] == pkg.name and rep["model"]["backend"] == available()[0]
    assert rep["model"]["version"] == pkg.version  # not the backend's version
    ids = sorted(n["id"] for n in rep["nodes"])
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(labels)))
    assert ids == list(range(1, arr.max() + 1)) == sorted(set(np.unique(arr)) - {0})
    for n in rep["nodes"]:
        assert n["voxels"] == int((arr == n["id"]).sum())
        assert n["short_axis_mm"] <= n["long_axis_mm"] <= n["max_diameter_3d_mm"] + 1e-6
        assert n["recist"] in ("normal", "pathological", "enlarged")
    rows = table.read_text().splitlines()
    assert rows[0].split(",") == outputs.CSV_COLUMNS and len(rows) == len(ids) + 1
    assert "wrote" in out and "short mm" in out
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left


def test_existing_outputs_need_overwrite(tmp_path, run_cli, capsys, placeholder_package):
    base = run_cli

    def run_cli(*args):
        return base(*args, "--model", placeholder_package)
    assert run_cli("infer", SAMPLE, "--out", tmp_path, "-q") == 0
    report = tmp_path / "sample_neck_phantom.report.json"
    report.write_text("marker")
    assert run_cli("infer", SAMPLE, "--out", tmp_path, "-q") == 2
    assert "--overwrite" in capsys.readouterr().err and report.read_text() == "marker"
    assert run_cli("infer", SAMPLE, "--out", tmp_path, "-q", "--overwrite") == 0
    assert json.loads(report.read_text())["schema"] == "lnrt.report/1"


def test_json_mode_prints_only_the_report(tmp_path, run_cli, capsys, placeholder_package):
    assert run_cli("infer", SAMPLE, "--out", tmp_path, "--json", "--model", placeholder_package) == 0
    captured = capsys.readouterr()
    rep = json.loads(captured.out)
    assert rep["schema"] == "lnrt.report/1" and captured.err == ""


def test_progress_goes_to_stderr_unless_quiet(tmp_path, run_cli, capsys, placeholder_package):
    assert run_cli("infer", SAMPLE, "--out", tmp_path / "a", "--model", placeholder_package) == 0
    assert "tiles" in capsys.readouterr().err
    assert run_cli("infer", SAMPLE, "--out", tmp_path / "b", "--quiet", "--model", placeholder_package) == 0
    assert capsys.readouterr().err == ""


def test_failed_write_leaves_nothing(tmp_path, monkeypatch, session):
    res = session.run(SAMPLE)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(outputs.Path, "write_text", broken)
    with pytest.raises(lnrt.LnrtError, match="No space left"):
        res.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_measure_keeps_instance_ids_and_splits_binary_masks(tmp_path, run_cli):
    truth = sitk.ReadImage(TRUTH)
    arr = sitk.GetArrayFromImage(truth).astype(np.uint16)
    arr[arr == 2] = 40  # instance ids are kept as given
    inst = sitk.GetImageFromArray(arr)
    inst.CopyInformation(truth)
    sitk.WriteImage(inst, str(tmp_path / "reader.nii.gz"))
    assert run_cli("measure", tmp_path / "reader.nii.gz", "--image", SAMPLE, "--out", tmp_path, "-q") == 0
    rep = json.loads((tmp_path / "reader.report.json").read_text())
    assert 40 in [n["id"] for n in rep["nodes"]] and 2 not in [n["id"] for n in rep["nodes"]]
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE)))
    for n in rep["nodes"]:  # mean HU comes from the --image, over exactly the node's voxels
        assert n["mean_hu"] == pytest.approx(ct[arr == n["id"]].mean(), abs=0.01)
    binary = sitk.GetImageFromArray((arr > 0).astype(np.uint8))
    binary.CopyInformation(truth)
    sitk.WriteImage(binary, str(tmp_path / "mask.nii.gz"))
    assert run_cli("measure", tmp_path / "mask.nii.gz", "--out", tmp_path, "-q") == 0
    rep_b = json.loads((tmp_path / "mask.report.json").read_text())
    import cc3d

    n_cc = cc3d.connected_components(arr > 0, connectivity=26, return_N=True)[1]  # touching nodes merge
    assert [n["id"] for n in rep_b["nodes"]] == list(range(1, n_cc + 1))
    assert sum(n["voxels"] for n in rep_b["nodes"]) == sum(n["voxels"] for n in rep["nodes"])
    assert rep_b["nodes"][0]["mean_hu"] is None


def test_measure_refuses_an_image_of_another_grid(tmp_path, run_cli, capsys):
    other = sitk.ReadImage(str(SAMPLE))
    other.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(other, str(tmp_path / "other.nii.gz"))
    assert run_cli("measure", TRUTH, "--image", tmp_path / "other.nii.gz", "--out", tmp_path / "o") == 2
    assert "geometry" in capsys.readouterr().err
    float_labels = sitk.GetImageFromArray(np.full((4, 4, 4), 0.5, np.float32))
    sitk.WriteImage(float_labels, str(tmp_path / "float.nii.gz"))
    assert run_cli("measure", tmp_path / "float.nii.gz", "--out", tmp_path / "o") == 2
    assert "whole numbers" in capsys.readouterr().err


def test_cuda_without_a_gpu_says_so_in_one_line(tmp_path, run_cli, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has ONNX Runtime's CUDA provider")
    assert run_cli("infer", SAMPLE, "--out", tmp_path, "--device", "cuda") == 2
    err = capsys.readouterr().err.strip()
    assert "no usable CUDA GPU" in err and "\n" not in err


def test_unknown_option_is_a_usage_error(run_cli, capsys):
    assert run_cli("infer", SAMPLE, "--variant", "fp64") == 2
    assert "fp64" in capsys.readouterr().err


def test_many_scans_through_one_session_do_not_grow_memory(placeholder_package):
    def rss_mb():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    session = lnrt.Session(placeholder_package, threads=2)
    for _ in range(3):
        session.run(SAMPLE)
    base = rss_mb()
    for _ in range(8):
        result = session.run(SAMPLE)
    del result
    assert rss_mb() - base < 40.0
