"""QC pictures: the label layout (property tests), the node pictures' field of view, scale bar and
orientation, the overview on thin stacks and crowded scans, and the HTML page's optional fields."""
import itertools
import math

import numpy as np
import pytest

import lnrt
from lnrt import qc
from lnrt.qc import Label, boxes_overlap, fov_mm, place_labels
from lnrt.volume import Orientation, Volume

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

GAP = 2.0


def _inside(box, canvas):
    return box[0] >= -1e-9 and box[1] >= -1e-9 and box[2] <= canvas[0] + 1e-9 and box[3] <= canvas[1] + 1e-9


def _check(canvas, placed, obstacles=(), gap=GAP):
    boxes = [p.box for p in placed if p.box is not None]
    for b in boxes:
        assert _inside(b, canvas), (b, canvas)
        for o in obstacles:
            assert not boxes_overlap(b, o, gap - 1e-9), (b, o)
    for a, b in itertools.combinations(boxes, 2):
        assert not boxes_overlap(a, b, gap - 1e-9), (a, b)
    return boxes


def _frame_obstacles(W, H):
    """Boxes like a node picture's: orientation letters on the four edges and a scale bar."""
    return [(3, H / 2 - 10, 17, H / 2 + 10), (W - 17, H / 2 - 10, W - 3, H / 2 + 10),
            (W / 2 - 7, 3, W / 2 + 7, 23), (W / 2 - 7, H - 23, W / 2 + 7, H - 3), (9, H - 38, 95, H - 9)]


def _axes(rng, W, H, kind):
    """A node centre and two perpendicular axes (end points in pixels) of the given kind."""
    if kind == "edge":  # both axes hugging an edge or a corner
        cx = rng.choice([rng.uniform(0, 25), rng.uniform(W - 25, W), rng.uniform(0, W)])
        cy = rng.choice([rng.uniform(0, 25), rng.uniform(H - 25, H)])
    else:
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    long_len = {"tiny": rng.uniform(0, 4), "huge": rng.uniform(0.7, 1.4) * max(W, H),
                "edge": rng.uniform(2, 200), "any": rng.uniform(0, 400)}[kind]
    short_len = long_len * rng.uniform(0, 1)
    a = rng.uniform(0, math.pi)
    u, v = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    c = np.array([cx, cy])
    long_ = tuple(map(tuple, (c - u * long_len / 2, c + u * long_len / 2)))
    short = tuple(map(tuple, (c - v * short_len / 2, c + v * short_len / 2)))
    return (cx, cy), long_, short


@pytest.mark.parametrize("kind", ["any", "edge", "tiny", "huge"])
def test_axis_labels_never_overlap_and_stay_on_the_canvas(kind):
    rng = np.random.default_rng(["any", "edge", "tiny", "huge"].index(kind))
    for trial in range(150):
        W, H = (480, 480) if trial % 3 else (int(rng.integers(220, 700)), int(rng.integers(220, 700)))
        obstacles = _frame_obstacles(W, H)
        centre, long_, short = _axes(rng, W, H, kind)
        labels = [Label(float(rng.uniform(80, 130)), float(rng.uniform(14, 24)), seg, seg, away_from=centre)
                  for seg in (long_, short)]
        xs = [p[0] for p in long_ + short]
        ys = [p[1] for p in long_ + short]
        node = (min(xs), min(ys), max(xs), max(ys))
        placed = place_labels((W, H), labels, obstacles=obstacles, avoid=[node], avoid_segments=[long_, short])
        boxes = _check((W, H), placed, obstacles)
        assert len(boxes) == 2, (kind, trial, W, H, long_, short)  # two labels always fit
        for p, lab in zip(placed, labels):  # a moved label has a leader that reaches its axis
            d = qc.box_segment_distance(p.box, *lab.target)[0]
            if p.leader is None:
                assert d <= 12.0 + 1e-6
            else:
                assert math.dist(p.leader[0], qc._box_point(p.box, p.leader[0])) < 1e-6  # starts on the box
                assert qc._seg_point_dist(p.leader[1], *lab.target)[0] < 1e-6  # ends on the axis


def test_node_number_labels_never_pile_up():
    rng = np.random.default_rng(7)
    for trial in range(80):
        W, H = int(rng.integers(160, 500)), int(rng.integers(120, 500))
        n = int(rng.integers(1, 60))
        # clustered like neck nodes: a few groups, plus some anywhere, some on the border
        centres = rng.uniform([0, 0], [W, H], (3, 2))
        pts = centres[rng.integers(0, 3, n)] + rng.normal(0, 12, (n, 2))
        pts[::7] = rng.uniform([0, 0], [W, H], pts[::7].shape)
        pts = np.clip(pts, 0, [W, H])
        obstacles = _frame_obstacles(W, H)[:4]
        labels = []
        for x, y in pts:
            r = float(rng.uniform(5, 15))
            labels.append(Label(float(rng.uniform(10, 30)), 18.0, ((x, y),), ((x, y), (x, y)),
                                target_radius=r, away_from=(x - 1, y + 1), anchor_radius=r))
        placed = place_labels((W, H), labels, obstacles=obstacles, leader_px=4.0, max_dist=80.0)
        boxes = _check((W, H), placed, obstacles)
        if n <= 10 and W >= 300 and H >= 300:
            assert len(boxes) == n, (trial, n)
        for p, lab in zip(placed, labels):
            if p.box is not None:  # never far from its node's circle
                assert qc.box_segment_distance(p.box, *lab.anchors * 2)[0] <= 80.0 + lab.anchor_radius + 1e-6


def test_a_label_with_no_room_is_left_out_not_overlapped():
    placed = place_labels((100, 40), [Label(60, 20, ((50, 20),), ((50, 20), (50, 20)))] * 3)
    boxes = _check((100, 40), placed)
    assert len(boxes) == 1 and placed[1].box is None and placed[2].box is None
    assert place_labels((50, 50), [Label(60, 10, ((0, 0),), ((0, 0), (0, 0)))])[0].box is None


def test_a_label_next_to_its_axis_has_no_leader_and_a_pushed_one_has():
    seg = ((200, 200), (260, 200))
    free = place_labels((480, 480), [Label(100, 20, seg, seg, away_from=(230, 200))])[0]
    assert free.leader is None and qc.box_segment_distance(free.box, *seg)[0] < 12
    # a wall of obstacles around the axis: the label must go farther and gets a leader line
    wall = [(120, 150, 340, 250)]
    pushed = place_labels((480, 480), [Label(100, 20, seg, seg)], obstacles=wall)[0]
    assert pushed.box is not None and pushed.leader is not None and not boxes_overlap(pushed.box, wall[0], GAP)


def test_field_of_view_is_60_mm_and_grows_in_20_mm_steps():
    assert fov_mm(0) == fov_mm(10) == fov_mm(30) == 60
    assert fov_mm(30.5) == fov_mm(50) == 80
    assert fov_mm(50.5) == 100 and fov_mm(64) == 100 and fov_mm(83) == 120


def _volume(shape, spacing_xyz, hu=-50.0):
    return Volume(np.full(shape, hu, np.float32), spacing_xyz, (0.0, 0.0, 0.0), np.eye(3))


def _measured(ct: Volume, lab: np.ndarray):
    res = lnrt.measure(ct.with_array(lab.astype(np.uint16)), image=ct)
    return res, res.report()


def _node_boxes(ct: Volume, lab, node):
    o = Orientation.of(ct.direction)
    can = o.canonical_volume(ct)
    return qc._node_figure(can.array, o.to_canonical(lab), can, node)


@pytest.mark.parametrize("spacing, radius_mm, fov", [((3.9, 3.9, 2.5), 6.0, 60), ((0.5, 0.5, 2.0), 2.0, 60),
                                                      ((0.9, 0.9, 3.0), 16.0, 80), ((0.9, 0.9, 3.0), 30.0, 120)])
def test_node_picture_fixed_size_fov_scale_bar_and_free_labels(spacing, radius_mm, fov):
    nz = 5
    ny = nx = int(math.ceil(140 / spacing[0]))
    ct = _volume((nz, ny, nx), spacing)
    zz, yy, xx = np.mgrid[:nz, :ny, :nx]
    r = np.hypot((yy - ny / 2) * spacing[1], (xx - nx / 2) * spacing[0] * 0.8)
    lab = ((r <= radius_mm) & (zz == 2)).astype(np.uint8)
    ct.array[lab > 0] = 40
    res, report = _measured(ct, lab)
    (node,) = report["nodes"]
    g = qc.node_layout(ct.array, lab, ct, node)
    assert g["fov_mm"] == fov and g["mm_per_px"] == pytest.approx(fov / qc.NODE_PX)
    img, boxes = _node_boxes(ct, lab, node)
    assert img.size == (qc.NODE_PX, qc.NODE_PX + qc.HEADER_PX)
    assert {"label_long", "label_short", "scale_bar", "letter_R", "letter_L", "letter_A", "letter_P"} <= set(boxes)
    for a, b in itertools.combinations(boxes.values(), 2):
        assert not boxes_overlap(a, b)
    for b in boxes.values():
        assert _inside(b, (qc.NODE_PX, qc.NODE_PX))
    # the scale bar's white line is 10 mm long at the picture's pixel size
    arr = np.asarray(img)[qc.HEADER_PX:]
    row = arr[qc.NODE_PX - 12]
    white = np.nonzero((row == 255).all(axis=1))[0]
    assert white.size and white.max() - white.min() == pytest.approx(10 / g["mm_per_px"], abs=1.5)


def test_node_picture_is_smooth_on_a_coarse_scan():
    """A 3.9 mm scan is upsampled (bicubic), not shown as blocks of identical pixels."""
    ct = _volume((3, 40, 40), (3.9, 3.9, 2.5))
    ct.array[:] = np.random.default_rng(0).normal(40, 60, ct.array.shape)
    lab = np.zeros(ct.shape, np.uint8)
    lab[1, 18:22, 18:22] = 1
    _, report = _measured(ct, lab)
    img, _ = _node_boxes(ct, lab, report["nodes"][0])
    grey = np.asarray(img.convert("L"))[qc.HEADER_PX + 150:qc.HEADER_PX + 330, 150:330].astype(int)
    # blocky nearest-neighbour pictures repeat each value ~31 times along a row; bicubic varies every pixel
    same = (np.diff(grey, axis=1) == 0).mean()
    assert same < 0.5


@pytest.mark.parametrize("flip_x", [False, True])
def test_node_picture_is_radiological_for_any_storage_order(flip_x):
    """Patient's right on the picture's left and anterior at the top, whichever way the array is stored."""
    sp = (0.8, 0.8, 3.0)
    n = 150
    arr = np.full((4, n, n), -50.0, np.float32)
    lab = np.zeros(arr.shape, np.uint8)
    lab[1, 70:80, 70:80] = 1
    arr[1, 70:80, 40:64] = 1000.0  # bone on the patient's right of the node (canonical x small = right)
    arr[1, 40:64, 70:80] = -1000.0  # air anterior to it (canonical y small = anterior)
    direction = np.eye(3)
    if flip_x:  # stored with x running to the patient's right: array flipped, geometry says so
        direction = np.diag([-1.0, 1.0, 1.0])
        arr, lab = arr[:, :, ::-1].copy(), lab[:, :, ::-1].copy()
    ct = Volume(arr, sp, (0.0, 0.0, 0.0), direction)
    _, report = _measured(ct, lab)
    page, files = qc.render_qc(ct, lab, report)
    from io import BytesIO

    img = np.asarray(Image.open(BytesIO(files["node_001.png"])).convert("L"))[qc.HEADER_PX:].astype(float)
    c = qc.NODE_PX // 2
    left, right = img[c - 20:c + 20, 40:200].mean(), img[c - 20:c + 20, 280:440].mean()
    top, bottom = img[40:200, c - 20:c + 20].mean(), img[280:440, c - 20:c + 20].mean()
    assert left > right + 40  # bone (white) on the picture's left
    assert top < bottom - 40  # air (black) at the top


def test_thin_stack_coronal_is_stretched_and_says_so():
    lay = qc.overview_layout((10, 512, 512), (2.0, 0.977, 0.977))
    assert lay["coronal_h"] == qc.MIN_CORONAL_PX and lay["coronal_stretch"] > 5
    thick = qc.overview_layout((128, 128, 128), (2.5, 3.9, 3.9))
    assert thick["coronal_stretch"] == 1.0
    assert thick["coronal_h"] / thick["width"] == pytest.approx(128 * 2.5 / (128 * 3.9), rel=0.02)
    ct = _volume((10, 120, 120), (0.977, 0.977, 2.0))
    lab = np.zeros(ct.shape, np.uint8)
    lab[3:6, 50:60, 40:52] = 1
    lab[4:6, 60:70, 80:90] = 2
    _, report = _measured(ct, lab)
    img, boxes = qc._overview_figure(ct.array, ct, report["nodes"])
    assert img.height >= qc.MIN_CORONAL_PX + qc.HEADER_PX
    assert all(len(b) == 2 for b in boxes.values())


def test_crowded_overview_numbers_never_overlap():
    rng = np.random.default_rng(3)
    ct = _volume((20, 100, 100), (1.0, 1.0, 2.0))
    lab = np.zeros(ct.shape, np.uint16)
    for i in range(1, 61):
        z, y, x = rng.integers(0, 19), rng.integers(0, 98), rng.integers(0, 98)
        lab[z:z + 2, y:y + 2, x:x + 2] = i
    _, report = _measured(ct, lab)
    img, panels = qc._overview_figure(ct.array, ct, report["nodes"])
    for name, boxes in panels.items():
        assert 0 < len(boxes) <= qc.OVERVIEW_MAX_LABELS
        for a, b in itertools.combinations(boxes, 2):
            assert not boxes_overlap(a, b)


def _sample_report():
    ct = _volume((6, 80, 80), (0.9, 0.9, 3.0))
    lab = np.zeros(ct.shape, np.uint8)
    lab[2:4, 30:40, 20:30] = 1
    lab[2:5, 40:52, 50:60] = 2
    return (ct, lab, *_measured(ct, lab))


def test_page_shows_slice_position_instance_number_and_side_when_the_report_has_them():
    ct, lab, _, report = _sample_report()
    for n in report["nodes"]:
        n.pop("slice_position_mm", None), n.pop("instance_number", None), n.pop("side", None)
        n.pop("sop_instance_uid", None)
    page, files = qc.render_qc(ct, lab, report)  # without the optional fields: still a page
    assert 'id="row-1"' in page and "Instance Number</th>" not in page and len(files) == 3
    report["nodes"][0].update(slice_position_mm=12.5, instance_number=7, sop_instance_uid="1.2.3.4", side="right")
    report["nodes"][1].update(slice_position_mm=9.0, instance_number=None, sop_instance_uid=None, side="left")
    page, _ = qc.render_qc(ct, lab, report)
    assert "Instance Number</th>" in page  # a column once a node has one
    row1 = page.split('id="row-1"')[1].split("</tr>")[0]
    assert "<td>12.5</td><td>7</td>" in row1 and ">right<" in row1
    row2 = page.split('id="row-2"')[1].split("</tr>")[0]
    assert "<td>9.0</td><td></td>" in row2 and ">left<" in row2
    cap1 = page.split('id="node-1"')[1].split("</figcaption>")[0]
    assert "right" in cap1 and "at 12.5 mm" in cap1 and "Instance Number 7" in cap1 and "1.2.3.4" in cap1


def test_page_without_nodes_says_so():
    ct = _volume((6, 40, 40), (0.9, 0.9, 3.0))
    lab = np.zeros(ct.shape, np.uint8)
    _, report = _measured(ct, lab)
    page, files = qc.render_qc(ct, lab, report)
    assert 'id="no-nodes"' in page and "No nodes found" in page and "no nodes found" in page.split("</h1>")[0]
    assert list(files) == ["overview.png"]
