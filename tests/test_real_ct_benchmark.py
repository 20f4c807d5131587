"""benchmarks/real_ct_behaviour.py's count of reported nodes behind the spinal cord (likely false positives
in the posterior muscles), on hand-built masks in the LPS array order of the OpenKBP scans."""
import importlib.util
from pathlib import Path

import numpy as np


def _bench():
    path = Path(__file__).parents[1] / "benchmarks" / "real_ct_behaviour.py"
    spec = importlib.util.spec_from_file_location("real_ct_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_node_behind_the_cord_is_counted_and_one_in_front_or_without_a_cord_is_not():
    bench = _bench()
    cord = np.zeros((10, 40, 40), bool)
    cord[:, 20:23, 19:22] = True  # rows (y) run posterior
    behind, front = np.zeros_like(cord), np.zeros_like(cord)
    behind[3:6, 28:32, 10:14] = True
    front[3:6, 8:12, 10:14] = True
    assert bench._behind_cord(behind, cord) is True
    assert bench._behind_cord(front, cord) is False
    cord[4] = False  # the node's median slice has no cord: not counted
    assert bench._behind_cord(behind, cord) is False
