"""The small things a new user trips over (issue 17): progress that shows every stage with the time
spent and left, measure's output names, a readable repr, errors that fit the API as well as the CLI,
helpful messages for folders that hold no series directly."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

import lnrt
from lnrt.cli import Progress, main

SAMPLE = lnrt.sample_path()


def test_progress_on_a_terminal_shows_stages_elapsed_time_and_time_left(capsys):
    p = Progress(True, tty=True)
    p("read", 0, 0)
    p("network", 0, 10)
    p("network", 4, 10)
    p("write", 0, 0)
    p.finish()
    err = capsys.readouterr().err
    frames = [f.strip() for f in err.split("\r") if f.strip()]
    assert frames[0].startswith("reading (") and "s left" in frames[2] and "4/10 tiles" in frames[2]
    assert frames[-2].startswith("writing outputs") and frames[-1].startswith("done in ")
    assert err.endswith("\n") and err.count("\n") == 1  # one line, redrawn


def test_an_error_after_progress_on_a_terminal_gets_a_clean_line(capsys):
    p = Progress(True, tty=True)
    p("read", 0, 0)
    Progress.clear()
    err = capsys.readouterr().err
    assert err.endswith("\r" + " " * 79 + "\r") and Progress.active is None


def test_a_run_refused_while_reading_prints_only_its_error(tmp_path, capfd):
    bad = tmp_path / "mr.nii.gz"
    img = sitk.GetImageFromArray(np.full((8, 16, 16), 100, np.int16))
    sitk.WriteImage(img, str(bad))
    assert main(["infer", str(bad), "--out", str(tmp_path / "o")]) == 2  # not --quiet: progress on
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lnrt: error:")


def test_progress_in_a_log_lists_each_stage_once(tmp_path, run_cli, capsys, placeholder_package):
    assert run_cli("infer", SAMPLE, "--out", tmp_path, "--model", placeholder_package) == 0
    err = capsys.readouterr().err.splitlines()
    starts = [line.split(" (")[0].split(": ")[0] for line in err]
    for label in ("reading", "resampling to the model grid", "network", "resampling back", "components",
                  "measuring", "writing outputs", "done in"):
        assert any(s.startswith(label) for s in starts), (label, err)
    assert len(err) == len(set(starts)) + 1  # each stage once; the network's start and end


def test_measuring_lnrts_own_labels_does_not_double_the_suffix(tmp_path, run_cli, placeholder_package):
    assert run_cli("infer", SAMPLE, "--out", tmp_path / "a", "-q", "--model", placeholder_package) == 0
    labels = tmp_path / "a" / "sample_neck_phantom.nodes.nii.gz"
    assert run_cli("measure", labels, "--out", tmp_path / "b", "-q", "--no-viewer") == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "sample_neck_phantom.nodes.csv", "sample_neck_phantom.nodes.nii.gz", "sample_neck_phantom.report.json"]
    # measured in place, the label map would replace its own input: refused before any work
    assert run_cli("measure", labels, "--out", tmp_path / "a", "-q", "--overwrite") == 2


def test_repr_is_one_short_line(session):
    res = session.run(SAMPLE)
    text = repr(res)
    assert "\n" not in text and len(text) < 200 and f"{len(res.nodes)} node" in text and "200x167x42" in text


def test_existing_output_error_fits_python_and_the_cli(tmp_path, session):
    res = session.run(SAMPLE)
    res.save(tmp_path)
    with pytest.raises(lnrt.LnrtError, match=r"overwrite=True in Python"):
        res.save(tmp_path)


def _tiny_series(folder):
    pytest.importorskip("pydicom")
    from test_dicom_series import write_series
    return write_series(folder, n=6)


def test_a_folder_of_series_in_subfolders_lists_them(tmp_path, capfd):
    root = tmp_path / "study"
    uid_a, _ = _tiny_series(root / "neck")
    uid_b, _ = _tiny_series(root / "thorax")
    assert main(["infer", str(root), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "2 DICOM series in its subfolders" in err
    assert f"neck ({uid_a}" in err and f"thorax ({uid_b}" in err and "give one subfolder" in err
    assert not (tmp_path / "o").exists()


def test_a_folder_of_image_files_says_to_give_a_file(tmp_path, capfd):
    folder = tmp_path / "niftis"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(SAMPLE, folder / name)
    assert main(["infer", str(folder), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "holds 2 image files" in err and "a.nii.gz" in err and "give one file" in err


def test_sample_is_documented_as_it_is():
    img = sitk.ReadImage(str(SAMPLE))
    readme = (lnrt.sample_path().parents[2] / "README.md")
    if not readme.exists():
        pytest.skip("not a source checkout")
    text = readme.read_text(encoding="utf-8")
    size = "×".join(map(str, img.GetSize()))
    assert size in text.replace(" × ", "×") and "lnrt.sample_path()" in text
    assert np.allclose(img.GetSpacing(), (0.9, 0.9, 3.0))


def test_bf16_without_openvino_names_what_to_install_not_an_option_never_typed(monkeypatch, capfd, tmp_path):
    from lnrt import backends
    monkeypatch.setattr(backends, "_importable", lambda m: m != "openvino")
    assert main(["infer", str(SAMPLE), "--out", str(tmp_path / "o"), "-q", "--variant", "bf16"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "pip install 'lnrt[openvino]'" in err and "--backend" not in err
