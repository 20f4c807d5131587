"""Families of variation for the held-out-family protocol (issue 19): whole kinds of node or scanner that a
model can be trained without, then scored on alone, as the honest check that it generalises.

Each family is a change to a neck phantom's spec (`lnrt.models.neck.NeckSpec`) drawn from a generator, so
the same seed gives the same phantom with and without it. None of them is drawn by `make_spec`, so a model
trained before they existed, or with `lnrt.models.train` without `--families`, has never seen one:

- `flattened` (node shape): every node that still fits becomes 2-3 times as wide as it is thick in the
  axial plane (make_spec draws 1.0-1.9). Reniform, flattened nodes are common in the normal neck.
- `fatty_hilum` (node density): nodes with a short axis of 7 mm or more and no necrotic core get an eccentric fat-density
  hilum (-90 to -30 HU, a quarter to 0.4 of the node's width and length, at its edge), which a normal node has and
  the network has only seen as the fat around a node. The hilum is part of the node in the truth.
- `sharp_kernel` (scanner): a sharp (edge-enhancing) reconstruction kernel: unsharp masking of amount
  0.6-1.2 at 0.8-1.5 mm after the blur and the noise, so edges overshoot and the noise is grainy and
  higher, as bone and detail kernels give.
- `back_muscles` (anatomy): the deep and posterior neck muscles as separate bellies, each in its own fat
  plane (erector spinae, semispinalis, multifidus, splenius, levator scapulae, scalenes, longus colli), the
  scan's muscle 0-25 HU less dense and the bellies fat-infiltrated down to 10 HU, continued into the
  shoulders and upper back of a context scan. On the real OpenKBP necks, 21 of the 33 nodes 1.3rc2 reported
  on pt_2 and 23 of the 30 on pt_3 lay behind the spinal cord (14 and 18 of them outside every PTV), in
  exactly these muscles at the base of the neck and the upper back (median 3-46 HU), where the phantoms had
  one paraspinal ellipse and a trapezius. It changes no node; no node ids are returned.

`python benchmarks/evaluate_default.py --family NAME` scores a package on held-out phantoms of one family.
"""
from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np

from .neck import NeckSpec, _fits


def flattened(spec: NeckSpec, rng: np.random.Generator) -> list:
    """Nodes widened in-plane to 2-3 times their short axis, where they still fit (`_fits` tests a circle
    of the long semi-axis, so the angle does not matter); returns the ids (1-based, as the truth's
    labels) of those changed."""
    changed = []
    for i, n in enumerate(spec.nodes):
        wide = replace(n, axes=(n.axes[1] * float(rng.uniform(2.0, 3.0)), n.axes[1], n.axes[2]))
        if _fits(replace(spec, nodes=spec.nodes[:i] + spec.nodes[i + 1:]), wide):
            spec.nodes[i] = wide
            changed.append(i + 1)
    return changed


def fatty_hilum(spec: NeckSpec, rng: np.random.Generator) -> list:
    """A fat-density hilum at the edge of every node of 7 mm or more without a necrotic core; returns the ids
    of those changed."""
    changed = []
    for i, n in enumerate(spec.nodes):
        if n.short_axis_mm >= 7 and not n.necrosis:
            spec.nodes[i] = replace(n, hilum=(float(rng.uniform(0.25, 0.4)), float(rng.choice([-1.0, 1.0])),
                                              float(rng.uniform(-90, -30))))
            changed.append(i + 1)
    return changed


def sharp_kernel(spec: NeckSpec, rng: np.random.Generator) -> list:
    """A sharp reconstruction kernel (unsharp masking after blur and noise); returns every node's id."""
    spec.kernel = (float(rng.uniform(0.6, 1.2)), float(rng.uniform(0.8, 1.5)))
    return list(range(1, len(spec.nodes) + 1))


# (name, cx, cy, a, b, angle) of the right side's bellies, mm in the phantom frame (y posterior); the left
# mirrors them. From axial neck anatomy at C3-C6, scaled to the phantom's 58-72 x 50-60 mm neck.
BELLIES = (("erector spinae", 22, 42, 18, 11, 0.0), ("longus colli", 8, -2, 5, 3.5, 0.0),
           ("scalenes", 24, 4, 5, 7, 0.3), ("levator scapulae", 33, 24, 6, 8, 0.5), ("multifidus", 6, 31, 3, 5, 0.0),
           ("semispinalis", 10, 44, 5, 7, 0.0), ("splenius", 25, 49, 11, 4, 0.4))


def back_muscles(spec: NeckSpec, rng: np.random.Generator) -> list:
    """Deep and posterior muscle bellies (each with p 0.85), jittered 3 mm, scaled 0.75-1.3, drifting up to
    4 mm over the neck's height; the first, the erector spinae, fills the back beside the spine and the
    others cut it with their fat planes. Every muscle of the scan becomes 0-25 HU less dense (20-65 HU:
    the muscle behind pt_3's spine reads 26-29 HU median, where `make_spec` draws 45-65, denser than
    every node), and each belly up to 15 HU below that (fat infiltration, not under 10 HU). A belly that
    would reach a node is left out, so the truth is unchanged. Returns [] (no node changed)."""
    spec.muscle_hu = spec.muscle_hu - float(rng.uniform(0, 25))
    out = []
    for side in (-1.0, 1.0):
        for _name, cx, cy, a, b, ang in BELLIES:
            k = float(rng.uniform(0.75, 1.3))
            belly = (side * (cx + rng.uniform(-3, 3)), cy + float(rng.uniform(-3, 3)), a * k, b * k, side * ang,
                     float(rng.uniform(-4, 4)), float(rng.uniform(-4, 4)),
                     max(10.0, spec.muscle_hu - float(rng.uniform(0, 15))))
            if rng.random() < 0.85 and not any(_reaches(belly, n) for n in spec.nodes):
                out.append(belly)
    spec.back_muscles = tuple(out)
    return []


def _reaches(belly: tuple, node) -> bool:
    """Whether a belly (with its 1.5 mm fat plane, anywhere along its drift) could touch a node: the test is
    a circle of the belly's long semi-axis around its mid-height centre, widened by the whole drift."""
    cx, cy, a, b, _ang, dx, dy, _hu = belly
    reach = max(a, b) + 1.5 + float(np.hypot(dx, dy)) + node.axes[0] * (1 + (node.lobes[0] if node.lobes else 0))
    return bool(np.hypot(node.center[0] - (cx + dx * 0.5), node.center[1] - (cy + dy * 0.5)) < reach)


FAMILIES = {"flattened": flattened, "fatty_hilum": fatty_hilum, "sharp_kernel": sharp_kernel,
            "back_muscles": back_muscles}


def apply_family(spec: NeckSpec, name: str, seed: int) -> list:
    """Give `spec` the family `name` (its own random stream from `seed`); returns the ids of the nodes it
    changed (a scanner family changes them all)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}: expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name](spec, np.random.default_rng([seed, zlib.crc32(name.encode())]))
