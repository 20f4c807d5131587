"""The held-out families of lnrt.models.families: each changes what it says and nothing else, the same
seed gives the same phantom, and training draws none of them unless asked."""
import numpy as np
import pytest

from lnrt.models.families import FAMILIES, apply_family
from lnrt.models.neck import make_spec, random_scan, render, truth_table

SEEDS = range(20000, 20006)


def test_flattened_nodes_are_two_to_three_times_as_wide_as_thick_and_keep_their_short_axis():
    changed = 0
    for seed in SEEDS:
        plain, spec = make_spec(seed), make_spec(seed)
        ids = apply_family(spec, "flattened", seed)
        changed += len(ids)
        for row, before in zip(truth_table(spec), truth_table(plain)):
            assert row["short_axis_mm"] == before["short_axis_mm"]  # the short axis is the thickness, kept
            ratio = row["long_axis_mm"] / row["short_axis_mm"]
            assert (2.0 <= ratio <= 3.0 + 1e-9) if row["id"] in ids else row == before
    assert changed >= 8  # 32 of the 155 nodes of the 16 held-out phantoms fit when flattened


def test_a_fatty_hilum_is_fat_inside_the_node_and_the_truth_keeps_the_whole_node():
    seed = 20003
    plain = make_spec(seed)
    spec = make_spec(seed)
    ids = apply_family(spec, "fatty_hilum", seed)
    assert ids and all(spec.nodes[i - 1].short_axis_mm >= 7 for i in ids)
    for s in (plain, spec):  # no blur and no noise, so each voxel shows what was painted
        s.blur, s.noise = False, 0.0
    hu0, lab0, _ = render(plain, (2.0, 1.0, 1.0))
    hu1, lab1, _ = render(spec, (2.0, 1.0, 1.0))
    assert np.array_equal(lab0, lab1)  # the hilum is part of the node
    for i in ids:
        node = lab1 == i
        fat = (hu1[node] < -20).mean()
        assert 0.02 < fat < 0.3 and (hu0[node] >= 30).all(), (i, fat)  # 30-60 HU nodes, now part fat
    outside = ~np.isin(lab1, ids)
    assert np.array_equal(hu0[outside], hu1[outside])


def test_a_sharp_kernel_overshoots_edges_and_roughens_the_noise_and_leaves_the_truth():
    seed = 20001
    plain, spec = make_spec(seed), make_spec(seed)
    assert apply_family(spec, "sharp_kernel", seed) == list(range(1, len(spec.nodes) + 1))
    hu0, lab0, _ = render(plain, (2.0, 1.0, 1.0))
    hu1, lab1, _ = render(spec, (2.0, 1.0, 1.0))
    assert np.array_equal(lab0, lab1)
    fat = (hu0 > -150) & (hu0 < -50)
    assert hu1[fat].std() > 1.5 * hu0[fat].std()
    bone = hu0 > 400  # beside bone, the overshoot reaches higher than the bone itself
    assert hu1[bone].max() > hu0[bone].max() + 50


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_families_are_reproducible_by_seed(name):
    a, b = make_spec(20002), make_spec(20002)
    assert apply_family(a, name, 20002) == apply_family(b, name, 20002)
    assert a == b and a != make_spec(20002)


def test_an_unknown_family_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown family 'round'"):
        random_scan(20000, family="round")


def test_training_draws_a_family_only_when_asked():
    from lnrt.models.train import PhantomPool

    rng = np.random.default_rng(0)
    plain = PhantomPool(1, 1000, rng)
    assert all(not n.hilum for n in plain._neck(1001).nodes) and plain._neck(1002).kernel == ()
    asked = PhantomPool(1, 1000, rng, families=("sharp_kernel",), family_share=1.0)
    assert asked._neck(1003).kernel != ()


def test_back_muscles_are_bellies_in_fat_planes_that_leave_every_node_and_the_truth_alone():
    for seed in (20003, 20005):
        plain, spec = make_spec(seed), make_spec(seed)
        assert apply_family(spec, "back_muscles", seed) == []  # no node changed
        assert len(spec.back_muscles) >= 4 and spec.nodes == plain.nodes
        assert plain.muscle_hu - 25 <= spec.muscle_hu <= plain.muscle_hu  # every muscle less dense
        assert all(10 <= m[7] <= spec.muscle_hu for m in spec.back_muscles)
        for s in (plain, spec):
            s.blur, s.noise = False, 0.0
        hu0, lab0, origin = render(plain, (2.0, 1.0, 1.0))
        hu1, lab1, _ = render(spec, (2.0, 1.0, 1.0))
        assert np.array_equal(lab0, lab1)
        assert np.array_equal(hu0[lab0 > 0], hu1[lab0 > 0])  # no belly reaches a node
        k = hu1.shape[0] // 2
        t = (origin[2] + 2.0 * k) / spec.height
        seen = 0
        for cx, cy, a, b, ang, dx, dy, hu in spec.back_muscles:
            x, y = cx + dx * t, cy + dy * t
            i, j = int(round(y - origin[1])), int(round(x - origin[0]))
            seen += hu1[k, i, j] == np.float32(hu)  # its centre, unless spine or vessel painted later
        assert seen >= len(spec.back_muscles) - 2
        assert ((hu1 != hu0) & (np.abs(hu1 - spec.fat_hu) < 1e-3)).sum() > 200  # fat planes cut the muscles


def test_back_muscles_continue_into_the_shoulders_and_are_hard_negatives():
    from lnrt.models.context import make_context
    from lnrt.models.neck import confounders

    plain, spec = make_spec(20003), make_spec(20003)
    apply_family(spec, "back_muscles", 20003)
    ctx = make_context(plain, 20003)
    assert ctx.below > 30 and make_context(spec, 20003).below == ctx.below  # the family draws nothing of it
    hu0, lab0, origin = render(plain, (2.0, 1.0, 1.0), context=ctx)
    hu1, lab1, _ = render(spec, (2.0, 1.0, 1.0), context=ctx)
    assert np.array_equal(lab0, lab1)
    shoulders = slice(0, int(round(-origin[2] / 2.0)) - 2)
    assert (np.abs(hu1[shoulders] - hu0[shoulders]) > 20).sum() > 1000
    extra = len(confounders(spec)) - len(confounders(plain))
    assert extra == 6 * len(spec.back_muscles)
