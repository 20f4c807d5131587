"""Anatomy beyond the neck (head, shoulders, chest, abdomen): negatives with known content (numpy only)."""
import dataclasses

import numpy as np
import pytest

from lnrt.models.context import Canvas, make_abdomen, make_context, render_abdomen
from lnrt.models.neck import make_spec, random_scan, render

SP = (3.0, 2.0, 2.0)


def _with_context(seed, below=60.0, above=120.0):
    spec = make_spec(seed)
    ctx = dataclasses.replace(make_context(spec, seed), below=below, above=above)
    return spec, ctx, render(spec, SP, context=ctx)


def test_context_is_deterministic_and_unlabelled_outside_the_neck():
    spec, ctx, (hu, labels, origin) = _with_context(31)
    _, _, (hu2, labels2, _) = _with_context(31)
    np.testing.assert_array_equal(hu, hu2)
    np.testing.assert_array_equal(labels, labels2)
    z = origin[2] + np.arange(hu.shape[0]) * SP[0]
    assert z[0] == pytest.approx(-60.0) and z[-1] >= spec.height + 120.0 - SP[0]
    outside = (z < 0) | (z > spec.height)
    assert outside.sum() >= (60 + 120) / SP[0] - 1
    assert labels[outside].max() == 0  # no node truth in the head, shoulders or chest
    # the field of view widens to hold the shoulders, which are wider than the neck
    body_width = (hu[z < -40] > -500).any(axis=(0, 1)).sum() * SP[2]
    assert body_width >= 2 * ctx.torso[0] - 10 > 2 * spec.rx


def test_context_keeps_every_neck_node_and_its_volume():
    spec, _, (_, labels, _) = _with_context(32)
    plain = render(spec, SP)[1]
    n = len(spec.nodes)
    with_ctx = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    alone = np.bincount(plain.ravel(), minlength=n + 1)[1:]
    # the grids differ by a sub-voxel shift, so volumes agree to partial-volume accuracy
    np.testing.assert_allclose(with_ctx, alone, rtol=0.25, atol=6)
    assert (with_ctx > 0).sum() == (alone > 0).sum()


def test_context_draws_the_structures_it_documents():
    spec, ctx, (hu, _, origin) = _with_context(33, below=100.0, above=140.0)
    z = origin[2] + np.arange(hu.shape[0]) * SP[0]
    chest = hu[(z < -40)]
    body = chest > -500
    assert ((chest < -700) & ~body).sum() > 0
    lung_like = ((chest > -900) & (chest < -750)).sum()
    assert lung_like > 0.02 * body.sum()  # lung apices
    assert (chest > 700).sum() > 0.01 * body.sum()  # cortical bone: clavicles, humeri, scapulae, ribs
    vertex = hu[(z > spec.height + 110) & (z < spec.height + 130)]
    inside = vertex > -500
    brain = (vertex > -20) & (vertex < 90)  # brain at 25-40 HU plus up to 25 HU of noise
    assert brain.sum() > 0.5 * inside.sum()  # the cranium is mostly brain...
    assert (vertex > 800).sum() > 0.05 * inside.sum()  # ...inside a skull


def test_bones_have_a_cortex_around_marrow():
    xs = np.arange(-40, 40, 0.5, dtype=np.float32)
    c = Canvas(xs, xs, np.full((len(xs), len(xs)), -100.0, np.float32))
    from lnrt.models.context import _bone
    _bone(c, 0, 0, 20, 20, 1000.0, 200.0, cortex=2.0)
    row = c.s[len(xs) // 2]
    assert row[len(xs) // 2] == 200.0  # marrow at the centre
    assert (row == 1000.0).sum() == pytest.approx(2 * 2.0 / 0.5, abs=2)  # two 2 mm cortices
    assert row[0] == -100.0


def test_abdomen_has_no_nodes_and_holds_bowel_organs_and_bone():
    spec = make_abdomen(8)
    hu, labels, origin = render_abdomen(spec, SP)
    np.testing.assert_array_equal(hu, render_abdomen(make_abdomen(8), SP)[0])
    assert labels.max() == 0 and labels.shape == hu.shape
    assert hu.shape[0] == round(spec.height / SP[0])
    assert len(spec.bowel) >= 8
    kinds = {t.lumen_hu < -500 for t in spec.bowel}
    body = hu > -500
    inner_air = (hu < -700) & np.roll(body, 20, axis=2) & np.roll(body, -20, axis=2)
    assert inner_air.sum() > 0 or kinds == {False}  # bowel or stomach gas inside the body
    assert ((hu > 30) & (hu < 130)).sum() > 0.1 * body.sum()  # solid organs, muscle, bowel wall
    assert (hu > 600).sum() > 0  # spine


def test_random_scan_kinds():
    ct, truth, spec = random_scan(20001, kind="context", in_plane=(1.5, 1.5), slices=(3.0, 3.0))
    ct_n, truth_n, _ = random_scan(20001, in_plane=(1.5, 1.5), slices=(3.0, 3.0))
    assert np.prod(ct.shape) > 2 * np.prod(ct_n.shape)  # head and shoulders added
    assert np.unique(truth.array).size == np.unique(truth_n.array).size  # same nodes
    ab, ab_truth, _ = random_scan(20001, kind="abdomen", in_plane=(2.0, 2.0), slices=(3.0, 3.0))
    assert ab_truth.array.max() == 0
    with pytest.raises(ValueError, match="expected neck, context or abdomen"):
        random_scan(1, kind="pelvis")


def test_marble_textures_soft_tissue_only():
    from lnrt.models.context import marble

    hu = np.full((20, 40, 40), 50.0, np.float32)
    hu[:, :, :10] = -100.0  # fat
    hu[:, :, 30:] = 700.0  # bone
    out = marble(hu.copy(), (2.0, 1.0, 1.0), 20.0, np.random.default_rng(0), rows=slice(5, 15))
    np.testing.assert_array_equal(out[:, :, :10], -100.0)
    np.testing.assert_array_equal(out[:, :, 30:], 700.0)
    np.testing.assert_array_equal(out[:5], hu[:5])  # rows outside `rows` untouched
    soft = out[5:15, :, 10:30]
    assert 8.0 < soft.std() < 30.0 and abs(soft.mean() - 50.0) < 10.0
    # smooth, not white: neighbouring voxels are strongly correlated
    d = np.diff(soft, axis=2)
    assert d.std() < 0.6 * soft.std()


def test_planning_ct_couch_and_mask_sit_outside_the_body():
    spec = make_spec(34)
    spec.noise, spec.blur = 0.0, False
    ctx = dataclasses.replace(make_context(spec, 34), below=20.0, above=20.0, couch_y=140.0, mask_hu=200.0)
    hu, labels, origin = render(spec, SP, context=ctx)
    ys = origin[1] + np.arange(hu.shape[1]) * SP[1]
    k = hu.shape[0] // 2  # a neck slice
    shell = ys >= 140.0
    first = np.flatnonzero(shell)[0]
    assert (hu[:, first] == 300.0).all()  # the couch's top shell spans every slice, full width
    assert (hu[k][(ys > 145) & (ys < 165)] == -800.0).all()  # its foam core
    mask = np.abs(hu[k] - 200.0) < 1
    assert mask.sum() > 20  # the thermoplastic mask...
    from lnrt.models.context import _dilate
    bare = render(spec, SP, context=dataclasses.replace(ctx, mask_hu=0.0))[0][k]
    body = bare > -500
    body[ys >= 140.0] = False  # the couch is not the patient
    np.testing.assert_array_equal(hu[k][body], bare[body])  # the mask changes nothing inside the body
    assert not (mask & body).any()
    assert mask[_dilate(body, 3)].sum() > 0.5 * mask.sum()  # it lies a few mm off the skin
    assert labels.max() > 0 and not labels[:, ys >= 140.0].any()
