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


FAMILIES = {"flattened": flattened, "fatty_hilum": fatty_hilum, "sharp_kernel": sharp_kernel}


def apply_family(spec: NeckSpec, name: str, seed: int) -> list:
    """Give `spec` the family `name` (its own random stream from `seed`); returns the ids of the nodes it
    changed (a scanner family changes them all)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}: expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name](spec, np.random.default_rng([seed, zlib.crc32(name.encode())]))
