"""`lnrt evaluate` on hand-built cases whose answers are known."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from lnrt.errors import LnrtError
from lnrt.evaluate import evaluate, evaluate_scan, hausdorff, pair_paths, summarize
from lnrt.volume import Volume

SPACING_XYZ = (1.0, 1.0, 2.0)


def vol(arr):
    return Volume(arr, SPACING_XYZ, (0, 0, 0), np.eye(3))


@pytest.fixture
def case():
    """Five true nodes (boxes of 4 x 10 x 10 voxels) and a prediction with known outcomes."""
    truth = np.zeros((20, 80, 80), np.uint16)
    pred = np.zeros_like(truth)
    boxes = {1: (2, 5), 2: (2, 25), 3: (2, 45), 4: (10, 5), 5: (10, 25)}
    for i, (z, y) in boxes.items():
        truth[z:z + 4, y:y + 10, 10:20] = i
    pred[2:6, 5:15, 10:20] = 1  # node 1: found exactly
    # node 2: missed
    pred[2:6, 45:55, 10:13] = 1  # node 3: split into two pieces covering 3 + 4 of 10 columns (70 %)
    pred[2:6, 45:55, 16:20] = 1
    pred[10:14, 5:15, 10:14] = 1  # node 4: 40 % covered
    pred[10:14, 25:35, 10:16] = 1  # node 5: 60 % covered
    pred[15:18, 60:66, 60:66] = 1  # a false positive far from everything
    return truth, pred


def test_detection_counts_split_partial_missed_and_false_positive(case):
    truth, pred = case
    r = evaluate_scan(vol(pred), vol(truth))
    assert r["true_nodes"] == 5 and r["pred_nodes"] == 6  # binary prediction split into components
    assert r["detected"] == 4 and r["detected_50"] == 3 and r["false_positives"] == 1
    by_id = {n["id"]: n for n in r["nodes"]}
    assert not by_id[2]["detected"] and by_id[2]["coverage"] == 0
    assert by_id[3]["detected_50"] and by_id[3]["coverage"] == pytest.approx(0.7)
    assert by_id[4]["detected"] and not by_id[4]["detected_50"] and by_id[4]["coverage"] == pytest.approx(0.4)
    assert by_id[5]["detected_50"] and by_id[5]["coverage"] == pytest.approx(0.6)
    assert by_id[1]["short_axis_error_mm"] == pytest.approx(0.0, abs=1e-6)
    assert by_id[4]["short_axis_error_mm"] < -3  # a 4-voxel-wide piece of a 10-voxel node
    inter = np.logical_and(pred > 0, truth > 0).sum()
    assert r["dice"] == pytest.approx(2 * inter / ((pred > 0).sum() + (truth > 0).sum()), abs=1e-4)


def test_summary_pools_nodes_and_stratifies_by_short_axis(case):
    truth, pred = case
    s = summarize([evaluate_scan(vol(pred), vol(truth)), evaluate_scan(vol(truth), vol(truth))])
    assert s["true_nodes"] == 10 and s["recall"] == pytest.approx(9 / 10) and s["recall_50"] == pytest.approx(8 / 10)
    assert s["false_positives_per_scan"] == pytest.approx(0.5)
    # every node is a 10 x 10 mm box: short axis about 10.5 mm, all in the 10-15 stratum
    assert s["recall_by_short_axis"]["10-15"]["nodes"] == 10 and s["recall_by_short_axis"]["<10"]["nodes"] == 0
    assert s["recall_short_ge_10mm"] == pytest.approx(0.9)


def test_dice_per_node_counts_every_touching_piece_and_lists_the_worst(case):
    truth, pred = case
    r = evaluate_scan(vol(pred), vol(truth))
    by_id = {n["id"]: n["dice"] for n in r["nodes"]}
    # covered share c of a node, every touching piece inside it: Dice = 2c / (1 + c)
    assert by_id == pytest.approx({1: 1.0, 2: 0.0, 3: 2 * 0.7 / 1.7, 4: 2 * 0.4 / 1.4, 5: 2 * 0.6 / 1.6}, abs=1e-4)
    spill = pred.copy()
    spill[2:6, 5:15, 20:30] = 1  # node 1's component doubled beyond the node: Dice 2 * 1 / (1 + 2)
    assert evaluate_scan(vol(spill), vol(truth))["nodes"][0]["dice"] == pytest.approx(2 / 3, abs=1e-4)
    s = summarize([r])
    assert s["dice_per_node_mean"] == pytest.approx(np.mean(list(by_id.values())), abs=1e-3)
    assert s["recall_by_short_axis"]["10-15"]["dice_per_node_mean"] == s["dice_per_node_mean"]
    assert [w["id"] for w in s["worst_nodes"]] == [2, 4, 5, 3, 1]  # lowest Dice first
    errors = sorted(abs(n["short_axis_error_mm"]) for n in r["nodes"] if "short_axis_error_mm" in n)
    assert s["short_axis_abs_error_mm_p90"] == pytest.approx(np.percentile(errors, 90), abs=1e-3)


def test_hausdorff_of_shifted_cubes_and_empty_masks():
    a = np.zeros((10, 30, 40), bool)
    b = np.zeros_like(a)
    a[3:7, 10:20, 10:20] = True
    b[3:7, 10:20, 13:23] = True
    hd, hd95 = hausdorff(a, b, (0.5, 1.0, 2.0))
    assert hd == pytest.approx(3 * 0.5) and hd95 <= hd
    assert hausdorff(a, a, (1, 1, 1)) == (0.0, 0.0)
    assert hausdorff(a, np.zeros_like(a), (1, 1, 1)) == (None, None)


def test_folders_pair_by_stem_and_cli_prints_a_table(tmp_path, case, run_cli, capsys):
    truth, pred = case
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    for name in ("a", "b"):
        for arr, path in ((pred, tmp_path / "pred" / f"{name}.nodes.nii.gz"), (truth, tmp_path / "gt" / f"{name}.nii.gz")):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(SPACING_XYZ)
            sitk.WriteImage(img, str(path))
    assert [p[0].name for p in pair_paths(tmp_path / "pred", tmp_path / "gt")] == ["a.nodes.nii.gz", "b.nodes.nii.gz"]
    res = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert res["summary"]["scans"] == 2 and res["summary"]["recall"] == pytest.approx(0.8)
    assert run_cli("evaluate", tmp_path / "pred", tmp_path / "gt", "--out", tmp_path / "e.json") == 0
    out = capsys.readouterr().out
    assert "recall (any overlap) 0.800" in out and "false positives per scan 1.00" in out
    assert json.loads((tmp_path / "e.json").read_text())["schema"] == "lnrt.evaluation/1"


def test_mismatched_grids_are_refused(case):
    truth, pred = case
    with pytest.raises(LnrtError, match="shape"):
        evaluate_scan(vol(pred[:10]), vol(truth))
    with pytest.raises(LnrtError, match="no such file"):
        pair_paths("/nonexistent", "/nonexistent")
