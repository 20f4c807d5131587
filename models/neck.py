"""Procedural neck CT phantoms with exact lymph-node ground truth (numpy only, deterministic by seed).

Every structure is an analytic shape in millimetres, so one phantom renders at any spacing, and the
truth does not depend on the grid. Axial slice frame (LPS): x to the patient's left, y to posterior,
z to superior; z = 0 is the thoracic inlet, the top is the mandible. What is drawn and why:

- Body: an ellipse about 120-140 x 100-120 mm (adult neck), skin 2 mm (about 30 HU), subcutaneous and
  deep fat (-120..-80 HU): nodes live in fat planes, which is what makes them visible on CT.
- Muscles (45-65 HU): sternocleidomastoids running from anteromedial (sternal head, inferior) to
  posterolateral (mastoid, superior), paraspinal and trapezius masses. Same HU as nodes, different
  shape: the network must learn shape and context, not a threshold.
- Cervical spine: vertebral body and posterior elements as bone (500-900 HU), spinal canal (about 30 HU).
- Airway: trachea below, larynx above (air, -1000 HU) with a soft-tissue wall.
- Thyroid lobes and isthmus in the lower third (iodine-rich, 90-130 HU); submandibular glands in the
  upper third (35-60 HU, node-like: a confounder) and parotids at the top (fatty, -30..10 HU).
- Mandible (1000-1400 HU) in the top slices and the hyoid bone as a small arc.
- Common carotids that curve along z, change calibre and bifurcate into internal and external
  carotids; internal jugular veins lateral to them, often asymmetric; 2-6 small veins (external and
  anterior jugular-like tubes, 2-4.4 mm) in the fat. Three scans in four are contrast-enhanced
  (arteries 250-350 HU, veins 120-250 HU); one in four is unenhanced, as radiotherapy planning CTs often
  are, and then every vessel has node density (35-55 HU): only its tubular 3D shape tells it from a node.
- Lymph nodes along the jugular chain, levels II (upper third), III (middle) and IV (lower), beside the
  vessels: ovoid to round, short axis 3-40 mm (most small, some 10-15 mm, a few enlarged), 30-60 HU;
  enlarged nodes sometimes have central necrosis (a 10-20 HU core) or a lobulated outline; some come as
  conglomerates of touching nodes (each its own instance in the truth). Nodes below 15 mm lie in fat
  and never overlap muscle or gland (with the same density, a node inside a muscle has no visible
  outline); enlarged nodes may displace them, as they do in patients.
- Imaging: partial-volume blur (Gaussian, sigma 0.4-1.6 mm in-plane and 0.6-2 mm along z: sharp
  thin-slice scans to coarse ones resampled up), Gaussian noise of 5-25 HU, and in some scans streaks
  radiating from the spine or mandible (metal/beam-hardening-like).
Nodes keep one axis along z with a random in-plane angle, so regular nodes have exact RECIST axes:
long = 2a, short = 2b.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LEVELS = {"IV": (0.05, 0.33), "III": (0.33, 0.62), "II": (0.62, 0.9)}


@dataclass(frozen=True)
class Node:
    center: tuple  # (x, y, z) mm in the phantom frame
    axes: tuple  # (a, b, c) semi-axes mm: in-plane long, in-plane short, along z
    angle: float  # in-plane angle of the long axis
    hu: float
    level: str
    necrosis: float = 0.0  # relative size of the necrotic core (0: none)
    lobes: tuple = ()  # (amplitude, frequency, phase) of an outline modulation; () = ellipsoid
    hilum: tuple = ()  # (width fraction, side +-1, HU) of a fatty hilum at the edge (lnrt.models.families)

    @property
    def long_axis_mm(self) -> float:
        return 2 * self.axes[0]

    @property
    def short_axis_mm(self) -> float:
        return 2 * self.axes[1]


@dataclass
class NeckSpec:
    seed: int
    height: float
    rx: float
    ry: float
    fat_hu: float
    muscle_hu: float
    noise: float
    blur: bool
    streaks: list
    vessels: dict
    blur_sigma: tuple = (0.6, 0.4)  # partial-volume blur (in-plane, along z) in voxels
    small_veins: list = field(default_factory=list)  # (x0, y0, dx, dy, radius, hu): tubes along z
    nodes: list = field(default_factory=list)
    kernel: tuple = ()  # (amount, sigma mm) of a sharp reconstruction kernel (lnrt.models.families); () = none
    # deep and posterior muscle bellies in their fat planes (lnrt.models.families `back_muscles`):
    # (cx, cy, a, b, angle, dx, dy, hu), the centre moving by (dx, dy) mm from t = 0 to 1; () = none
    back_muscles: tuple = ()


def _vessel_paths(rng, height, enhanced=True):
    """Centre lines and radii of carotids and jugulars as functions of z (mm)."""
    paths = {}
    bif = height * rng.uniform(0.55, 0.75)
    for side in (-1, 1):
        cx0, amp, ph = side * rng.uniform(14, 20), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
        rc = rng.uniform(3.0, 4.2)
        rj = rng.uniform(4.0, 8.0) * (1.0 if side > 0 else rng.uniform(0.6, 1.0))
        paths[side] = dict(bif=bif, cx0=cx0, amp=amp, ph=ph, rc=rc, rj=rj,
                           jx=side * rng.uniform(5, 9), jy=rng.uniform(-2, 4),
                           hu_a=rng.uniform(250, 350) if enhanced else rng.uniform(35, 55),
                           hu_v=rng.uniform(150, 250) if enhanced else rng.uniform(35, 55))
    return paths


def _carotid(p, z, height):
    """List of (x, y, r) circles of the carotid tree at height z."""
    x = p["cx0"] + p["amp"] * np.sin(2 * np.pi * z / height + p["ph"])
    y = -10.0 + 4.0 * z / height
    r = p["rc"] * (1.0 + 0.15 * np.sin(3 * np.pi * z / height))
    if z < p["bif"]:
        return [(x, y, r)]
    d = z - p["bif"]
    sign = np.sign(p["cx0"])
    return [(x + sign * 0.15 * d, y + 0.35 * d, 0.8 * r),  # internal: posterolateral
            (x - sign * 0.1 * d, y - 0.3 * d, 0.7 * r)]  # external: anteromedial


def _jugular(p, z, height):
    c = _carotid(p, min(z, p["bif"] - 1e-3), height)[0]
    return (c[0] + p["jx"], c[1] + p["jy"], p["rj"] * (1.0 + 0.2 * np.sin(2 * np.pi * z / height + p["ph"])))


def submandibular_gland(side: int) -> tuple:
    """(cx, cy, a, b, angle, hu) of one submandibular gland (drawn at height fractions 0.62-0.9)."""
    return (side * 32, -34, 13, 9, side * 0.3, 45.0)


def soft_tissue(spec: NeckSpec, t: float) -> list:
    """Muscles and glands at height fraction t: (cx, cy, a, b, angle, hu) ellipses, painted in order.

    The single definition both the renderer and the node placement use (nodes never overlap these).
    """
    m = spec.muscle_hu
    out = []
    for side in (-1, 1):
        out.append((side * 20, 40, 14, 11, 0.0, m))  # paraspinal
        out.append((side * 38, 44, 17, 7, side * 0.4, m))  # trapezius
        out.append((side * (22 + 30 * t), -32 + 34 * t, 13, 5.5, side * (0.9 - 0.7 * t), m))  # SCM
        if t < 0.35:
            out.append((side * 16, -24, 7, 12 * (1 - t), 0.0, 110.0))  # thyroid lobe
        if 0.62 < t < 0.9:
            out.append(submandibular_gland(side))
        if t > 0.85:
            out.append((side * 48, 6, 11, 17, 0.0, -10.0))  # parotid
    if t < 0.35:
        out.append((0, -33, 8, 3, 0.0, 110.0))  # thyroid isthmus
    for cx, cy, a, b, ang, dx, dy, hu in spec.back_muscles:  # each belly inside its own fat plane
        out.append((cx + dx * t, cy + dy * t, a + 1.5, b + 1.5, ang, spec.fat_hu))
        out.append((cx + dx * t, cy + dy * t, a, b, ang, hu))
    return out


def make_spec(seed: int, n_nodes: tuple = (4, 14)) -> NeckSpec:
    rng = np.random.default_rng(seed)
    height = rng.uniform(110, 160)
    enhanced = bool(rng.random() < 0.75)
    spec = NeckSpec(seed=seed, height=height, rx=rng.uniform(58, 72), ry=rng.uniform(50, 60),
                    fat_hu=rng.uniform(-120, -80), muscle_hu=rng.uniform(45, 65),
                    noise=rng.uniform(5, 25), blur=bool(rng.random() < 0.9),
                    streaks=[], vessels=_vessel_paths(rng, height, enhanced),
                    blur_sigma=(float(rng.uniform(0.4, 1.6)), float(rng.uniform(0.3, 1.0))))
    for _ in range(int(rng.integers(2, 7))):  # external/anterior jugular-like veins in the fat
        ang = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.55, 0.85)
        spec.small_veins.append((r * spec.rx * np.cos(ang), r * spec.ry * np.sin(ang), rng.uniform(-8, 8),
                                 rng.uniform(-8, 8), rng.uniform(1.0, 2.2),
                                 rng.uniform(120, 220) if enhanced else rng.uniform(35, 55)))
    if rng.random() < 0.25:
        spec.streaks = [(rng.uniform(0, height), rng.uniform(15, 40), int(rng.integers(6, 16)),
                         rng.uniform(0, np.pi), rng.choice(["spine", "mandible"]))
                        for _ in range(int(rng.integers(1, 4)))]
    target = int(rng.integers(n_nodes[0], n_nodes[1] + 1))
    tries = 0
    while len(spec.nodes) < target and tries < 400:
        tries += 1
        level = rng.choice(list(LEVELS))
        z = height * rng.uniform(*LEVELS[level])
        u = rng.random()
        short = rng.uniform(3, 9.5) if u < 0.6 else rng.uniform(10, 15) if u < 0.85 else rng.uniform(15, 40)
        b = short / 2
        a = b * rng.uniform(1.0, 1.9)
        c = float(np.clip(rng.uniform(b, 1.3 * a), 1.5, 0.5 * height))
        necrosis = rng.uniform(0.35, 0.6) if short >= 15 and rng.random() < 0.5 else 0.0
        lobes = (rng.uniform(0.08, 0.15), int(rng.integers(2, 5)), rng.uniform(0, 2 * np.pi)) \
            if short >= 10 and rng.random() < 0.3 else ()
        angle, hu = rng.uniform(0, np.pi), rng.uniform(30, 60)
        conglomerate = rng.random() < 0.15
        b2 = rng.uniform(3, 7)
        a2 = b2 * rng.uniform(1.0, 1.5)
        ang2 = rng.uniform(0, 2 * np.pi)
        for _ in range(40 if short < 15 else 150):  # room near the jugular chain before giving up its size
            side = rng.choice([-1, 1])
            jx, jy, jr = _jugular(spec.vessels[side], z, height)
            direction = rng.uniform(-0.7 * np.pi, 0.7 * np.pi) + (0 if side > 0 else np.pi)
            dist = jr + a + rng.uniform(1.5, 6 + 1.5 * a)
            cx, cy = jx + dist * np.cos(direction), jy + dist * np.sin(direction)
            cluster = [Node((cx, cy, z), (a, b, c), angle, hu, level, necrosis, lobes)]
            if conglomerate:  # a touching neighbour
                d = b + b2 - 0.5
                cluster.append(Node((cx + d * np.cos(ang2), cy + d * np.sin(ang2), z + rng.uniform(-2, 2)),
                                    (a2, b2, float(np.clip(rng.uniform(b2, a2), 1.5, None))),
                                    rng.uniform(0, np.pi), rng.uniform(30, 60), level))
            if all(_fits(spec, n) for n in cluster):
                spec.nodes.extend(cluster)
                break
    return spec


def confounders(spec: NeckSpec, per_structure: int = 6) -> np.ndarray:
    """Points (x, y, z mm, phantom frame) inside the node-density tissue that is not a node: both
    submandibular glands (45 HU, node-sized, 26 x 18 mm and 30-45 mm long) and, on unenhanced scans, the
    jugular veins, carotids and small veins (35-55 HU), and the deep and posterior muscle bellies of the
    `back_muscles` family where a spec has them. `per_structure` heights each, evenly spread.

    Patches centred here are the hard negatives of `lnrt.models.train --confounder-fraction`: a model
    fine-tuned on enlarged nodes alone called these structures nodes, 2.8 false positives per held-out
    scan at probability 0.80-0.86 (issue 19, model card), because by density and size they are nodes."""
    H, pts = spec.height, []
    for t in np.linspace(0.64, 0.88, per_structure):
        pts.extend(submandibular_gland(side)[:2] + (t * H,) for side in (-1, 1))
    if spec.vessels and next(iter(spec.vessels.values()))["hu_a"] < 100:  # unenhanced
        for z in np.linspace(0.05 * H, 0.95 * H, per_structure):
            for p in spec.vessels.values():
                pts.append(_jugular(p, z, H)[:2] + (z,))
                pts.extend(c[:2] + (z,) for c in _carotid(p, z, H))
            for vx0, vy0, dvx, dvy, _r, _hu in spec.small_veins:
                pts.append((vx0 + dvx * z / H, vy0 + dvy * z / H, z))
    for cx, cy, _a, _b, _ang, dx, dy, _hu in spec.back_muscles:
        pts.extend((cx + dx * t, cy + dy * t, t * H) for t in np.linspace(0.05, 0.95, per_structure))
    return np.asarray(pts, float).reshape(-1, 3)


def add_probe_node(spec: NeckSpec, rng: np.random.Generator, short: float, cc: float, hu: float,
                   necrosis: float = 0.0, elongation: float = 1.1, tries: int = 300) -> Node | None:
    """Add one node of chosen properties to a phantom (short axis and cranio-caudal extent in mm, density,
    necrotic core) beside the jugular chain at a random level, where it fits as `make_spec`'s nodes must;
    returns it (its label is then `len(spec.nodes)`), or None when no place was found. For controlled
    experiments on what makes a model stop short (`benchmarks/node_properties.py`, issue 19)."""
    b = short / 2
    a, c = b * elongation, cc / 2
    for _ in range(tries):
        z = float(rng.uniform(c + 2, spec.height - c - 2))
        side = rng.choice([-1, 1])
        jx, jy, jr = _jugular(spec.vessels[side], z, spec.height)
        direction = rng.uniform(-0.7 * np.pi, 0.7 * np.pi) + (0 if side > 0 else np.pi)
        dist = jr + a + rng.uniform(1.5, 6 + 1.5 * a)
        level = next(k for k, (lo, hi) in LEVELS.items() if z / spec.height < hi or k == "II")
        node = Node((jx + dist * np.cos(direction), jy + dist * np.sin(direction), z), (a, b, c),
                    rng.uniform(0, np.pi), hu, level, necrosis)
        if _fits(spec, node):
            spec.nodes.append(node)
            return node
    return None


def _fits(spec: NeckSpec, n: Node) -> bool:
    """Inside the deep neck, clear of vessels, spine, airway and other nodes."""
    x, y, z = n.center
    a = n.axes[0] * (1 + (n.lobes[0] if n.lobes else 0))
    if (abs(x) + a) / (spec.rx - 10) > 1 or (abs(y) + a) / (spec.ry - 10) > 1:
        return False
    if np.hypot(x, y - 15) < 22 + a or np.hypot(x, y + 25) < 14 + a:  # spine, airway
        return False
    for zz in (z - n.axes[2] * 0.7, z, z + n.axes[2] * 0.7):
        if not 0 <= zz <= spec.height:
            continue
        for p in spec.vessels.values():
            for vx, vy, vr in _carotid(p, zz, spec.height) + [_jugular(p, zz, spec.height)]:
                if np.hypot(x - vx, y - vy) < vr + a + 0.8:
                    return False
    ring = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    px = np.concatenate([[x], x + (a + 1.0) * np.cos(ring)])
    py = np.concatenate([[y], y + (a + 1.0) * np.sin(ring)])
    for zz in (z - n.axes[2] * 0.7, z, z + n.axes[2] * 0.7):
        if 0 <= zz <= spec.height and n.short_axis_mm < 15:  # enlarged nodes displace muscle and gland
            for cx, cy, ea, eb, ang, _ in soft_tissue(spec, zz / spec.height):
                if (_ellipse(px, py, cx, cy, ea, eb, ang) <= 1).any():
                    return False  # nodes lie in fat beside muscles and glands, not inside them
    for vx0, vy0, dvx, dvy, vr, _ in spec.small_veins:
        t = z / spec.height
        if np.hypot(x - (vx0 + dvx * t), y - (vy0 + dvy * t)) < vr + a + 1.0:
            return False
    for m in spec.nodes:
        if abs(m.center[2] - z) < m.axes[2] + n.axes[2] and \
                np.hypot(m.center[0] - x, m.center[1] - y) < m.axes[0] + a + 0.3:
            return False
    return True


def _ellipse(X, Y, cx, cy, a, b, ang=0.0):
    ca, sa = np.cos(ang), np.sin(ang)
    u = (X - cx) * ca + (Y - cy) * sa
    v = -(X - cx) * sa + (Y - cy) * ca
    return (u / a) ** 2 + (v / b) ** 2


def _blur_axis(vol, sigma, axis):
    if sigma < 0.2:
        return vol
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = [(0, 0)] * 3
    pad[axis] = (r, r)
    p = np.pad(vol, pad, mode="edge")
    out = np.zeros_like(vol)
    for i, w in enumerate(k):
        sl = [slice(None)] * 3
        sl[axis] = slice(i, i + vol.shape[axis])
        out += np.float32(w) * p[tuple(sl)]
    return out


def render(spec: NeckSpec, spacing_zyx=(2.0, 1.0, 1.0), fov_xy=(180.0, 150.0), pad_z=0.0, context=None):
    """(hu float32 (z, y, x), instance labels uint16) at the given spacing; voxel (0,0,0) at
    (x, y, z) = (-fov_x/2, -fov_y/2, -pad_z) mm in the phantom frame (returned as origin_xyz).

    `context` (a `lnrt.models.context.Context`) adds the shoulders and chest below and the head above
    the neck, unlabelled, and widens the field of view to hold them (pad_z is then ignored)."""
    sz, sy, sx = spacing_zyx
    below, above = (context.below, context.above) if context is not None else (pad_z, pad_z)
    if context is not None:
        fov_xy = tuple(max(a, b) for a, b in zip(fov_xy, context.fov))
    nz = int(round((spec.height + below + above) / sz))
    ny, nx = int(round(fov_xy[1] / sy)), int(round(fov_xy[0] / sx))
    origin = (-fov_xy[0] / 2, -fov_xy[1] / 2, -below)
    xs = origin[0] + np.arange(nx) * sx
    ys = origin[1] + np.arange(ny) * sy
    X, Y = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
    if context is not None:
        from .context import Canvas, marble, paint_context, planning_setup
        xs32, ys32 = xs.astype(np.float32), ys.astype(np.float32)
    rng = np.random.default_rng(spec.seed + 1_000_003)
    hu = np.empty((nz, ny, nx), np.float32)
    labels = np.zeros((nz, ny, nx), np.uint16)
    H = spec.height
    for k in range(nz):
        z = origin[2] + k * sz
        t = z / H
        s = np.full((ny, nx), -1000.0, np.float32)
        if context is not None and not 0 <= z <= H:
            body = paint_context(Canvas(xs32, ys32, s), context, spec, z)
            if body is not None:
                s[~body] = -1000.0
        elif 0 <= z <= H:
            body = _ellipse(X, Y, 0, 0, spec.rx * (1 - 0.1 * t), spec.ry)
            s[body <= 1] = 30.0
            s[_ellipse(X, Y, 0, 0, spec.rx * (1 - 0.1 * t) - 2, spec.ry - 2) <= 1] = spec.fat_hu
            for cx, cy, ea, eb, ang, value in soft_tissue(spec, t):
                s[_ellipse(X, Y, cx, cy, ea, eb, ang) <= 1] = value
            s[_ellipse(X, Y, 0, 15, 14, 12) <= 1] = 700.0  # vertebral body
            s[_ellipse(X, Y, 0, 40, 4, 12) <= 1] = 650.0  # spinous process
            s[_ellipse(X, Y, 0, 30, 8, 7) <= 1] = 30.0  # spinal canal
            aw = (10, 8) if t < 0.55 else (14, 11)
            s[_ellipse(X, Y, 0, -25, aw[0] + 2, aw[1] + 2) <= 1] = 40.0  # airway wall
            s[_ellipse(X, Y, 0, -25, *aw) <= 1] = -1000.0
            if t > 0.85:  # mandible: an anterior arc of bone
                r = np.hypot(X, Y + 5)
                arc = (np.abs(r - 48) < 3.5) & (Y < 15)
                s[arc & (body <= 1)] = 1200.0
            if abs(t - 0.6) < 0.02:  # hyoid
                r = np.hypot(X, Y + 15)
                s[(np.abs(r - 18) < 1.5) & (Y < -22)] = 700.0
            for p in spec.vessels.values():
                jx, jy, jr = _jugular(p, z, H)
                s[_ellipse(X, Y, jx, jy, jr, jr * 0.8) <= 1] = p["hu_v"]
                for vx, vy, vr in _carotid(p, z, H):
                    s[_ellipse(X, Y, vx, vy, vr, vr) <= 1] = p["hu_a"]
            for vx0, vy0, dvx, dvy, vr, vhu in spec.small_veins:
                s[_ellipse(X, Y, vx0 + dvx * t, vy0 + dvy * t, vr, vr) <= 1] = vhu
            for i, n in enumerate(spec.nodes, start=1):
                dz = (z - n.center[2]) / n.axes[2]
                if abs(dz) >= 1:
                    continue
                f = np.sqrt(1 - dz * dz)
                a, b = n.axes[0] * f, n.axes[1] * f
                e = _ellipse(X, Y, n.center[0], n.center[1], a, b, n.angle)
                if n.lobes:
                    amp, freq, ph = n.lobes
                    theta = np.arctan2(Y - n.center[1], X - n.center[0]) - n.angle
                    e = e / (1 + amp * np.sin(freq * theta + ph)) ** 2
                inside = e <= 1
                s[inside] = n.hu
                labels[k][inside] = i
                if n.necrosis:
                    s[inside & (e <= n.necrosis ** 2)] = rng.uniform(10, 20)
                if n.hilum:  # at the edge of the short axis, inside the node's outline
                    frac, side, fat = n.hilum
                    off = side * b * (1 - frac)
                    hx, hy = n.center[0] - off * np.sin(n.angle), n.center[1] + off * np.cos(n.angle)
                    s[inside & (_ellipse(X, Y, hx, hy, frac * a, frac * b, n.angle) <= 1)] = fat
            s[body > 1] = -1000.0  # nothing outside the body outline
            for zc, amp, nrays, ang0, src in spec.streaks:
                if abs(z - zc) < 3 * sz:
                    cx, cy = (0.0, 15.0) if src == "spine" else (0.0, -50.0)
                    theta = np.arctan2(Y - cy, X - cx)
                    rr = np.hypot(X - cx, Y - cy)
                    s += (amp * np.cos(nrays * (theta - ang0)) * np.exp(-rr / 60.0)).astype(np.float32) * (body <= 1)
        if context is not None and context.couch_y:
            mask = (body <= 1) if 0 <= z <= H else body
            planning_setup(Canvas(xs32, ys32, s), context, z, mask, H + 60)
        hu[k] = s
    if context is not None:  # textured soft tissue below and above the neck (the neck itself is unchanged)
        zs = origin[2] + np.arange(nz) * sz
        for rows in (np.flatnonzero(zs < 0), np.flatnonzero(zs > H)):
            if len(rows):
                marble(hu, spacing_zyx, context.texture, np.random.default_rng(spec.seed + 9_000_001 + int(rows[0])),
                       rows=slice(int(rows[0]), int(rows[-1]) + 1))
    return imaging(hu, spacing_zyx, spec.blur_sigma if spec.blur else None, spec.noise, rng,
                   spec.kernel), labels, origin


def imaging(hu, spacing_zyx, blur_sigma, noise, rng, kernel=()):
    """Partial-volume blur, then Gaussian noise, in place where possible. blur_sigma (in-plane, along z)
    is in voxels of a 1 x 1 x 2 mm grid, so the physical blur is the same at any rendering spacing;
    None means no blur. `kernel` (amount, sigma mm): a sharp reconstruction kernel, unsharp masking of
    the noisy image (edges overshoot, the noise turns grainy)."""
    sz, sy, sx = spacing_zyx
    if blur_sigma is not None:
        bxy = blur_sigma[0] * 1.0 / min(sy, sx)
        bz = blur_sigma[1] * 2.0 / sz
        hu = _blur_axis(_blur_axis(_blur_axis(hu, bxy, 2), bxy, 1), bz, 0)
    for k in range(hu.shape[0]):
        hu[k] += rng.normal(0, noise, hu.shape[1:]).astype(np.float32)
    if kernel:
        amount, sigma = kernel
        smooth = hu
        for axis, step in enumerate(spacing_zyx):
            smooth = _blur_axis(smooth, sigma / step, axis)
        hu += np.float32(amount) * (hu - smooth)
    return hu


def truth_table(spec: NeckSpec) -> list:
    """The node table of a phantom: exact axes for ellipsoids (lobulated outlines are flagged)."""
    return [{"id": i, "level": str(n.level), "long_axis_mm": round(n.long_axis_mm, 3),
             "short_axis_mm": round(n.short_axis_mm, 3), "center_xyz_mm": [round(float(c), 3) for c in n.center],
             "hu": round(n.hu, 1), "necrosis": bool(n.necrosis), "lobulated": bool(n.lobes)}
            for i, n in enumerate(spec.nodes, start=1)]


def random_scan(seed: int, in_plane=(0.4, 1.0), slices=(0.6, 3.0), kind: str = "neck", family: str | None = None):
    """A phantom as a scanner would store it: (ct Volume int16, truth Volume uint16, spec).

    Random in-plane spacing and slice thickness, a random axis-aligned storage direction (any of the
    48 signed axis permutations: LPS, RAS, coronal or sagittal stacks...) and a random origin.
    kind: "neck" (the neck alone), "context" (the neck with the head above and the shoulders and lung
    apices below, `lnrt.models.context`) or "abdomen" (no nodes at all; spec is then an AbdomenSpec).
    `family`: a held-out family of `lnrt.models.families` given to the neck (None: the plain generator).
    """
    from lnrt.volume import stored_as

    from .context import make_abdomen, make_context, render_abdomen

    rng = np.random.default_rng(seed + 7_000_001)
    px = float(rng.uniform(*in_plane))
    sp = (float(rng.uniform(*slices)), px, px)
    if kind == "abdomen":
        if family is not None:
            raise ValueError(f"family {family!r} with kind 'abdomen': the families change necks; expected "
                             "kind neck or context")
        spec = make_abdomen(seed)
        hu, labels, origin = render_abdomen(spec, sp)
    elif kind in ("neck", "context"):
        spec = make_spec(seed)
        if family is not None:
            from .families import apply_family
            apply_family(spec, family, seed)
        ctx = make_context(spec, seed, p_below=1.0, p_above=1.0) if kind == "context" else None
        hu, labels, origin = render(spec, sp, context=ctx)  # the body spans every slice, as in a patient scan
    else:
        raise ValueError(f"unknown phantom kind {kind!r}: expected neck, context or abdomen")
    perm = rng.permutation(3)
    direction = np.zeros((3, 3))
    for i, (p, sign) in enumerate(zip(perm, rng.choice([-1.0, 1.0], 3))):
        direction[p, i] = sign
    shifted = np.asarray(origin) + rng.uniform(-200, 200, 3)
    ct = stored_as(np.round(hu).astype(np.int16), sp, shifted, direction)
    truth = stored_as(labels, sp, shifted, direction)
    return ct, truth, spec
