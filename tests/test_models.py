"""The phantom generator (numpy) and the network, export and training (torch; skipped without it)."""
import json

import numpy as np
import pytest

from lnrt.models.neck import LEVELS, make_spec, render
from lnrt.recist import recist_axes


def test_phantoms_are_deterministic_by_seed():
    a = render(make_spec(5), (3.0, 1.5, 1.5))
    b = render(make_spec(5), (3.0, 1.5, 1.5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(render(make_spec(6), (3.0, 1.5, 1.5))[1], a[1])


def test_regular_nodes_have_their_analytic_axes_on_any_grid():
    sp = (1.0, 0.5, 0.5)
    checked = 0
    for seed in (11, 12):
        spec = make_spec(seed)
        hu, labels, origin = render(spec, sp)
        for i, n in enumerate(spec.nodes, start=1):
            if n.lobes or not (labels == i).any():
                continue
            crop = labels == i
            axes = recist_axes(crop, sp)
            # the largest cross-section is on the slice nearest the centre
            dz = abs(((n.center[2] - origin[2]) / sp[0]) % 1.0)
            dz = min(dz, 1 - dz) * sp[0]
            f = np.sqrt(max(0.0, 1 - (dz / n.axes[2]) ** 2))
            near = np.zeros_like(crop)
            for ax in range(3):
                for st in (-1, 1):
                    near |= np.roll(crop, st, ax)
            if ((labels[near] != i) & (labels[near] > 0)).any():
                continue  # conglomerates: a touching neighbour clips the outline
            assert abs(axes.short_mm - n.short_axis_mm * f) <= 0.5 + sp[1], (seed, i)
            assert abs(axes.long_mm - n.long_axis_mm * f) <= 0.5 + sp[1], (seed, i)
            checked += 1
    assert checked >= 8


def test_nodes_sit_in_fat_at_node_density():
    spec = make_spec(21)
    spec.noise = 0.0
    spec.blur = False
    spec.streaks = []
    hu, labels, _ = render(spec, (2.0, 1.0, 1.0))
    for i, n in enumerate(spec.nodes, start=1):
        m = labels == i
        if not m.any():
            continue
        if not n.necrosis:
            assert np.allclose(hu[m], n.hu)
        if n.short_axis_mm >= 15:
            continue  # enlarged nodes may displace muscle
        ring = np.zeros_like(m)
        for ax in (1, 2):
            for st in (-2, 2):
                ring |= np.roll(m, st, ax)
        ring &= labels == 0
        assert np.median(hu[ring]) < 0  # mostly fat around a node


def test_the_node_population_covers_levels_sizes_and_variants():
    specs = [make_spec(s) for s in range(1000, 1040)]
    nodes = [n for s in specs for n in s.nodes]
    shorts = np.array([n.short_axis_mm for n in nodes])
    assert shorts.min() < 4 and shorts.max() > 20 and (shorts >= 15).sum() >= 5
    assert {n.level for n in nodes} == set(LEVELS)
    assert any(n.necrosis for n in nodes) and any(n.lobes for n in nodes)
    assert 4 <= np.mean([len(s.nodes) for s in specs]) <= 14


torch = pytest.importorskip("torch")


def test_unet_shapes_configs_and_round_trip():
    from lnrt.models.unet import EDGE, UNet, UNetConfig

    net = UNet(EDGE).eval()
    x = torch.zeros(2, 1, 16, 32, 40)
    assert net(x).shape == (2, 2, 16, 32, 40)
    assert UNetConfig.from_dict(json.loads(json.dumps(EDGE.to_dict()))) == EDGE
    # an nnU-Net PlainConvUNet-like shape: 5 stages, instance norm, anisotropic first strides
    nn_like = UNetConfig(in_channels=1, num_classes=3, features=(32, 64, 128, 256, 320),
                         kernel_sizes=((1, 3, 3),) + ((3, 3, 3),) * 4,
                         strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)),
                         n_conv_per_stage=(2,) * 5, n_conv_per_stage_decoder=(2,) * 4, norm="instance",
                         deep_supervision=True)
    big = UNet(nn_like).train()
    outs = big(torch.zeros(1, 1, 8, 32, 32))
    assert isinstance(outs, list) and outs[0].shape == (1, 3, 8, 32, 32) and len(outs) == 4
    assert big.eval()(torch.zeros(1, 1, 8, 32, 32)).shape == (1, 3, 8, 32, 32)
    with pytest.raises(ValueError):
        UNetConfig(features=(8, 16), strides=((1, 1, 1),))


def test_onnx_export_matches_pytorch():
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from lnrt.models.package_model import export_onnx
    from lnrt.models.unet import EDGE, UNet

    torch.manual_seed(0)
    net = UNet(EDGE).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding is exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    data = export_onnx(net, patch=(16, 32, 32))
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 16, 32, 32)).astype(np.float32)  # batch 3: dynamic
    got = sess.run(None, {"image": x})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 1e-4
    ops = {n.op_type for n in __import__("onnx").load_from_string(data).graph.node}
    assert "BatchNormalization" not in ops  # folded into the convolutions


def test_training_runs_resumes_and_packages(tmp_path):
    pytest.importorskip("onnx")
    import argparse

    from lnrt.models.train import train

    args = argparse.Namespace(out=str(tmp_path / "run"), iterations=4, batch_size=1, patch=(16, 32, 32), lr=1e-3,
                              node_fraction=0.5, pool=2, refresh_every=2, log_every=2, val_every=4, val_count=1,
                              seed=0, device="cpu", threads=0, resume=False, package=None, package_only=False)
    train(args)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [2, 4] and "val_dice" in log[-1]
    args.iterations, args.resume = 6, True
    train(args)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [2, 4, 6]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 6


def test_coarsen_blurs_like_a_coarse_scan_resampled_up():
    from lnrt.models.train import SPACING, coarsen

    rng = np.random.default_rng(0)
    hu = np.full((24, 64, 64), -100.0, np.float32)
    hu[:, 20:44, 20:44] = 50.0  # a 24 mm soft-tissue block in fat
    noisy = hu + rng.normal(0, 20, hu.shape).astype(np.float32)
    out = coarsen(noisy, 4.0, 4.0)
    assert out.shape == hu.shape and out.dtype == np.float32
    assert abs(out.mean() - noisy.mean()) < 2.0  # area averaging keeps the mean density
    assert out[:, 50:62, 50:62].std() < 0.5 * noisy[:, 50:62, 50:62].std()  # noise averaged away
    edge = out[12, 32, 14:26]  # the block's edge spreads over about one coarse voxel
    assert np.sum((edge > -80) & (edge < 30)) >= 2
    assert SPACING == (2.0, 1.0, 1.0)


def test_phantom_pool_mixes_abdomens_and_context_as_asked():
    from lnrt.models.train import PhantomPool

    rng = np.random.default_rng(3)
    abd = PhantomPool(2, 1000, rng, {"abdomen": 1.0, "context": 0.0, "coarse": 0.0})
    assert all(len(nodes) == 0 and len(conf) == 0 for _, _, nodes, _, conf in abd.items)  # no neck nodes
    x, y = abd.sample((16, 32, 32), node_fraction=1.0)  # falls back to body patches
    assert x.shape == (16, 32, 32) and not y.any()
    ctx = PhantomPool(1, 1000, rng, {"abdomen": 0.0, "context": 1.0, "coarse": 1.0})
    plain = PhantomPool(1, 1000, rng)
    assert ctx.items[0][0].shape[2] > plain.items[0][0].shape[2]  # shoulders or head widen the field
    assert len(ctx.items[0][2]) > 0  # the neck keeps its nodes
    assert len(ctx.items[0][4]) > 0 and len(plain.items[0][4]) > 0  # and its glands as hard negatives
    hu, _, _, _, conf = plain.items[0]
    assert 20 <= np.median(hu[tuple(conf.T)]) <= 70  # node density: the voxels _make points at


def test_confounder_patches_are_centred_on_the_confounders():
    from lnrt.models.train import PhantomPool

    pool = PhantomPool(1, 1000, np.random.default_rng(0))
    hu = np.full((64, 128, 128), -1000.0, np.float32)
    hu[24:40, 48:80, 48:80] = 300.0  # a bright block around the one confounder point
    pool.items = [(hu, np.zeros(hu.shape, np.uint8), np.zeros((0, 3), int), np.array([[0, 0, 0]]),
                   np.array([[32, 64, 64]]))]
    centre = lambda x: x[16, 32, 32]  # noqa: E731 (the middle voxel of a 32 x 64 x 64 patch)
    on = [centre(pool.sample((32, 64, 64), 0.0, confounder_fraction=1.0)[0]) for _ in range(5)]
    off = [centre(pool.sample((32, 64, 64), 0.0)[0]) for _ in range(5)]
    assert min(on) > 0.5 and max(off) < 0.1  # 300 HU against the corner's air, after augmentation


def test_per_node_sampling_gives_a_tiny_node_as_many_patches_as_an_enlarged_one():
    from lnrt.models.train import PhantomPool

    pool = PhantomPool(1, 1000, np.random.default_rng(0))
    hu = np.zeros((64, 256, 256), np.float32)
    labels = np.zeros(hu.shape, np.uint16)
    labels[20:40, 20:40, 20:40] = 1  # 8,000 voxels
    labels[30:32, 200:202, 200:202] = 2  # 8 voxels, 160 voxels away: no patch holds both
    pool.items = [(hu, labels, np.argwhere(labels > 0), np.array([[0, 0, 0]]), np.zeros((0, 3), int))]
    tiny = lambda **kw: sum(0 < pool.sample((32, 64, 64), 1.0, **kw)[1].sum() <= 8 for _ in range(200))  # noqa: E731
    by_node, by_voxel = tiny(per_node=1.0), tiny()
    assert 70 <= by_node <= 130 and by_voxel <= 3  # half the patches against 1 in 1,000


def test_confounders_lie_in_node_density_tissue_that_is_not_a_node():
    """The hard negatives of --confounder-fraction: the submandibular glands always, the vessels when the
    scan is unenhanced (then they have node density), never a node."""
    from lnrt.models.neck import confounders, make_spec, render
    from lnrt.models.train import SPACING

    kinds = set()
    for seed in range(1000, 1012):
        spec = make_spec(seed)
        spec.blur, spec.noise = False, 0.0
        hu, labels, origin = render(spec, SPACING)
        pts = confounders(spec)
        unenhanced = spec.vessels[1]["hu_a"] < 100
        kinds.add(unenhanced)
        # 6 heights of both glands; on unenhanced scans also both jugulars, the carotids and the small veins
        assert len(pts) == 12 if not unenhanced else len(pts) > 12 + 6 * (4 + len(spec.small_veins))
        idx = np.round(((pts - origin) / np.asarray(SPACING[::-1]))[:, ::-1]).astype(int)
        values, lab = hu[tuple(idx.T)], labels[tuple(idx.T)]
        # (an enlarged node may displace a gland: then the point is in the node, as the label says)
        assert (((values >= 30) & (values <= 60)) | (lab > 0)).mean() >= 0.9, (seed, values)
        assert (lab == 0).mean() >= 0.5
    assert kinds == {True, False}  # both kinds of scan were seen


def test_enlarged_nodes_are_placed_on_purpose():
    """Issue 19: enlarged (and elongated) nodes rarely fit by chance, so `--enlarged` places them."""
    from lnrt.models.neck import make_spec
    from lnrt.models.train import ENLARGED_CC_MM, ENLARGED_SHORT_MM, add_enlarged_nodes

    rng = np.random.default_rng(5)
    before = after = added = long_ones = 0
    for seed in range(1000, 1020):
        spec = make_spec(seed)
        before += sum(n.short_axis_mm >= 15 for n in spec.nodes)
        k = add_enlarged_nodes(spec, rng)
        new = spec.nodes[len(spec.nodes) - k:]
        for n in new:
            cc = 2 * n.axes[2]
            assert ENLARGED_SHORT_MM[0] <= n.short_axis_mm <= ENLARGED_SHORT_MM[1] + 1e-9
            assert n.short_axis_mm - 1e-9 <= cc <= ENLARGED_CC_MM + 1e-9
            long_ones += cc >= 30
        added += k
        after += sum(n.short_axis_mm >= 15 for n in spec.nodes)
    assert after == before + added and added >= 20 and long_ones >= 5, (before, added, long_ones)


def test_activation_noise_acts_only_in_training():
    from lnrt.models.train import add_activation_noise
    from lnrt.models.unet import EDGE, UNet

    torch.manual_seed(0)
    net = UNet(EDGE)
    x = torch.randn(1, 1, 16, 32, 32)
    net.eval()
    with torch.no_grad():
        clean = net(x)
    add_activation_noise(net)
    with torch.no_grad():
        assert torch.equal(net(x), clean)  # eval: untouched, so exports and inference are unchanged
        net.train()
        noisy_a, noisy_b = net(x), net(x)
    assert not torch.equal(noisy_a, noisy_b)


def test_fake_quant_rounds_to_the_int8_grid_in_training_and_checkpoints_stay_plain(tmp_path):
    from lnrt.models.train import add_fake_quant, plain_state_dict, save_training_checkpoint
    from lnrt.models.unet import EDGE, UNet

    torch.manual_seed(0)
    net = UNet(EDGE)
    x = torch.randn(1, 1, 16, 32, 32)
    net.eval()
    with torch.no_grad():
        clean = net(x)
    add_fake_quant(net)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    seen = []
    hook = convs[2].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach()))
    with torch.no_grad():
        assert torch.equal(net(x), clean)  # eval: the float network, so exports and inference are unchanged
    net.train()
    out = net(x)
    hook.remove()
    assert not torch.allclose(out, clean, atol=1e-4)
    w = convs[2].weight.detach()  # the rounded weight: at most 255 levels per output channel, on its grid
    step = w.abs().amax(dim=(1, 2, 3, 4), keepdim=True) / 127.0
    assert torch.allclose(w / step, torch.round(w / step), atol=1e-3)
    assert not torch.allclose(convs[0].weight, torch.round(convs[0].weight / (convs[0].weight.abs().max() / 127))
                              * (convs[0].weight.abs().max() / 127))  # the input layer stays float
    out.mean().backward()
    original = convs[2].parametrizations.weight.original
    assert original.grad is not None and original.grad.abs().sum() > 0  # straight through the rounding
    state = plain_state_dict(net)
    plain = UNet(EDGE)
    plain.load_state_dict(state)  # the keys a plain UNet, the packager and --init expect
    assert torch.equal(plain.state_dict()[next(k for k in state if k.endswith("weight"))],
                       state[next(k for k in state if k.endswith("weight"))])
    opt = torch.optim.AdamW(net.parameters())
    save_training_checkpoint(tmp_path / "c.pt", net, opt, 1, EDGE)
    assert not any("parametrizations" in k for k in torch.load(tmp_path / "c.pt", weights_only=True)["model"])


def test_training_with_qat_resumes(tmp_path):
    import argparse

    from lnrt.models.train import train

    args = argparse.Namespace(out=str(tmp_path / "run"), iterations=2, batch_size=1, patch=(16, 32, 32), lr=1e-3,
                              node_fraction=0.5, pool=2, refresh_every=2, log_every=2, val_every=2, val_count=1,
                              seed=0, device="cpu", threads=0, resume=False, package=None, package_only=False,
                              qat=True)
    train(args)
    args.iterations, args.resume = 4, True
    train(args)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 4 and not any("parametrizations" in k for k in state["model"])


def test_export_refuses_a_patch_the_strides_do_not_divide():
    pytest.importorskip("onnx")
    from lnrt.models.package_model import export_onnx
    from lnrt.models.unet import EDGE, UNet

    with pytest.raises(ValueError, match="multiple of"):
        export_onnx(UNet(EDGE).eval(), patch=(18, 32, 32))  # z must be a multiple of 4


def test_the_training_stream_is_the_one_before_confounders_and_families_existed():
    """With --confounder-fraction 0 and no --families, a pool draws exactly what it drew before those
    options existed (the values were computed at commit 6b6867e), so earlier runs resume and reproduce."""
    from lnrt.models.train import PhantomPool

    rng = np.random.default_rng(7)
    pool = PhantomPool(2, 1000, rng, {"context": 0.5, "coarse": 0.5, "enlarged": 0.5})
    labelled = [int(pool.sample((32, 64, 64), 0.5)[1].sum()) for _ in range(4)]
    pool.refresh(1)
    assert labelled == [3889, 1023, 10544, 3824] and int(rng.integers(1 << 30)) == 563576229
