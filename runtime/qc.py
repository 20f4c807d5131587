"""QC pictures a radiologist checks in seconds, and one self-contained HTML page.

For every node: an axial crop at the measured slice (CT window W 400 / L 40, radiological convention:
patient's right on the left, anterior at the top, square pixels), the node's outline in its colour,
the long axis (yellow) and short axis (cyan) drawn from their reported end points and labelled in mm.
An overview figure (coronal and axial maximum-intensity projections) locates every node by id. The
HTML page inlines every picture (base64), so it opens from a USB stick with no network access; its node
table sorts by any column (short axis first). Needs Pillow (`pip install 'lnrt[qc]'`).
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from .optional import require
from .viewer import node_color, node_name
from .volume import Orientation, world_to_index

WINDOW = (-160.0, 240.0)  # W 400 / L 40: soft tissue
CROP_MARGIN_MM = 15.0
MIN_CROP_PX = 320
LONG_RGB, SHORT_RGB = (255, 230, 0), (0, 230, 255)


def _pil():
    require("PIL", "qc", "Pillow")
    from PIL import Image, ImageDraw, ImageFont
    return Image, ImageDraw, ImageFont


def _font(size: int):
    _, _, ImageFont = _pil()
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _grey(hu: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return (np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _label(draw, xy, text, fill, size=15):
    font = _font(size)
    x, y = xy
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):  # dark halo: readable on any grey
        draw.text((x + dx, y + dy), text, fill=(0, 0, 0), font=font)
    draw.text((x, y), text, fill=fill, font=font)


def node_picture(ct_c: np.ndarray, lab_c: np.ndarray, can, node: dict):
    """PIL image of one node's measured slice (canonical arrays, canonical volume geometry)."""
    Image, ImageDraw, _ = _pil()
    sp_y, sp_x = can.spacing[1], can.spacing[0]
    ends_l = world_to_index(can, np.asarray(node["long_axis_ends_mm"]))
    ends_s = world_to_index(can, np.asarray(node["short_axis_ends_mm"]))
    k = int(round(ends_l[0, 0]))
    sl_ct, sl_lab = ct_c[k], lab_c[k] == node["id"]
    ys, xs = np.nonzero(sl_lab)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half_mm = max((ys.max() - ys.min() + 1) * sp_y, (xs.max() - xs.min() + 1) * sp_x) / 2 + CROP_MARGIN_MM
    hy, hx = int(np.ceil(half_mm / sp_y)), int(np.ceil(half_mm / sp_x))
    y0, x0 = int(round(cy)) - hy, int(round(cx)) - hx
    h, w = 2 * hy + 1, 2 * hx + 1
    crop = np.zeros((h, w), np.uint8)  # outside the image: black, so border nodes stay centred
    lab = np.zeros((h, w), bool)
    ya, yb = max(0, y0), min(sl_ct.shape[0], y0 + h)
    xa, xb = max(0, x0), min(sl_ct.shape[1], x0 + w)
    crop[ya - y0:yb - y0, xa - x0:xb - x0] = _grey(sl_ct[ya:yb, xa:xb])
    lab[ya - y0:yb - y0, xa - x0:xb - x0] = sl_lab[ya:yb, xa:xb]
    scale = max(1.0, MIN_CROP_PX / (w * sp_x))  # output pixels per mm
    size = (int(round(w * sp_x * scale)), int(round(h * sp_y * scale)))
    img = Image.fromarray(crop).convert("RGB").resize(size, Image.NEAREST)
    mask = Image.fromarray((lab * 255).astype(np.uint8)).resize(size, Image.NEAREST)
    m = np.asarray(mask) > 0
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    arr = np.asarray(img).copy()
    arr[edge] = node_color(node)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)

    def px(idx):  # canonical (z, y, x) index -> picture pixel (centre of the voxel)
        return ((idx[2] - x0 + 0.5) * sp_x * scale, (idx[1] - y0 + 0.5) * sp_y * scale)
    for ends, rgb, text, pick in ((ends_l, LONG_RGB, f"L {node['long_axis_mm']:.1f} mm", 0),
                                  (ends_s, SHORT_RGB, f"S {node['short_axis_mm']:.1f} mm", 1)):
        a, b = px(ends[0]), px(ends[1])
        draw.line([a, b], fill=rgb, width=2)
        for p in (a, b):
            draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], outline=rgb, width=2)
        # long axis: label at its right end; short axis: at its upper end (they never share a spot)
        anchor = max((a, b), key=lambda p: p[0]) if pick == 0 else min((a, b), key=lambda p: p[1])
        _label(draw, (anchor[0] + 6, anchor[1] - (4 if pick == 0 else 20)), text, rgb)
    _label(draw, (6, 4), f"node {node['id']}  slice {node['axis_slice']}  {node['recist']}", (255, 255, 255), 16)
    _label(draw, (6, size[1] - 20), "R", (200, 200, 200), 14)
    _label(draw, (size[0] - 16, size[1] - 20), "L", (200, 200, 200), 14)
    return img


def overview_picture(ct_c: np.ndarray, can, nodes: list):
    """Coronal and axial MIPs side by side, every node circled and numbered at its centroid."""
    Image, ImageDraw, _ = _pil()
    sx, sy, sz = can.spacing
    panels = []
    for name, mip, (row_sp, col_sp), to_rc in (
            ("coronal", ct_c.max(axis=1)[::-1], (sz, sx), lambda i: (ct_c.shape[0] - 1 - i[0], i[2])),
            ("axial", ct_c.max(axis=0), (sy, sx), lambda i: (i[1], i[2]))):
        scale = 360.0 / (mip.shape[1] * col_sp)
        size = (int(round(mip.shape[1] * col_sp * scale)), int(round(mip.shape[0] * row_sp * scale)))
        img = Image.fromarray(_grey(mip)).convert("RGB").resize(size, Image.BILINEAR)
        draw = ImageDraw.Draw(img)
        for n in nodes:
            r, c = to_rc(world_to_index(can, np.asarray(n["centroid_mm"])))
            x, y = (c + 0.5) * col_sp * scale, (r + 0.5) * row_sp * scale
            rad = max(5.0, n["short_axis_mm"] / 2 * scale)
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], outline=node_color(n), width=2)
            _label(draw, (x + rad + 2, y - 8), str(n["id"]), node_color(n), 14)
        _label(draw, (6, 4), name, (255, 255, 255), 15)
        panels.append(img)
    out = Image.new("RGB", (sum(p.width for p in panels) + 8, max(p.height for p in panels)), (0, 0, 0))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 8
    return out


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _hu(node: dict) -> str:
    return "" if node["mean_hu"] is None else f"{node['mean_hu']:.0f}"


def _page(report: dict, overview: bytes, node_pngs: dict) -> str:
    inp, model = report["input"], report.get("model") or {}
    nodes = sorted(report["nodes"], key=lambda n: -n["short_axis_mm"])
    esc = html.escape
    rows = "\n".join(
        f'<tr id="row-{n["id"]}" class="{n["recist"]}"><td>{n["id"]}</td><td>{n["short_axis_mm"]:.1f}</td>'
        f'<td>{n["long_axis_mm"]:.1f}</td><td>{n["volume_mm3"]:.0f}</td><td>{n["axis_slice"]}</td>'
        f'<td>{esc(n["recist"])}</td><td>{_hu(n)}</td>'
        f'<td>{", ".join(f"{v:.1f}" for v in n["centroid_mm"])}</td>'
        f'<td><a href="#node-{n["id"]}">picture</a></td></tr>' for n in nodes)
    cards = "\n".join(
        f'<figure id="node-{n["id"]}" class="node"><img alt="{esc(node_name(n))}" '
        f'src="data:image/png;base64,{base64.b64encode(node_pngs[n["id"]]).decode()}">'
        f'<figcaption>{esc(node_name(n))}, long axis {n["long_axis_mm"]:.1f} mm, slice {n["axis_slice"]}'
        f'</figcaption></figure>' for n in nodes)
    body = (f'<table id="nodes"><thead><tr><th data-t="n">id</th><th data-t="n">short axis mm</th>'
            f'<th data-t="n">long axis mm</th><th data-t="n">volume mm³</th><th data-t="n">slice</th>'
            f'<th>RECIST</th><th data-t="n">mean HU</th><th>centroid x, y, z mm</th><th></th></tr></thead>'
            f'<tbody>{rows}</tbody></table>' if nodes else '<p id="no-nodes">No nodes found in this scan.</p>')
    uid = "".join(f"<br>{k.replace('_', ' ')}: {esc(str(inp[k]))}" for k in ("study_uid", "series_uid") if inp.get(k))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lnrt QC: {esc(inp.get("stem", ""))}</title>
<style>
body{{font-family:system-ui,sans-serif;background:#111;color:#eee;margin:1.5em}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{padding:.3em .7em;border-bottom:1px solid #333;text-align:right}}
th{{cursor:pointer;background:#222}}tr.enlarged td{{color:#ff6b6b}}tr.pathological td{{color:#ffb347}}
a{{color:#7cc7ff}}figure.node{{display:inline-block;margin:.5em;vertical-align:top}}
figcaption{{font-size:.9em;max-width:360px}}.meta{{color:#aaa;font-size:.9em}}
</style></head><body>
<h1>lnrt QC: {esc(inp.get("stem", ""))}</h1>
<p class="meta">input: {esc(str(inp.get("path")))}{uid}<br>model: {esc(str(model.get("name")))} {esc(str(model.get("version")))}
({esc(str(model.get("variant")))}, {esc(str(model.get("backend")))}); {len(nodes)} nodes.
{esc("; ".join(report.get("warnings", [])))}<br>Not for clinical use unless the model is validated for it.</p>
<h2>Overview</h2><img id="overview" alt="overview" src="data:image/png;base64,{base64.b64encode(overview).decode()}">
<h2>Nodes</h2>{body}
<div id="pictures">{cards}</div>
<script>
document.querySelectorAll("#nodes th").forEach(function(th, col) {{
  th.addEventListener("click", function() {{
    var tb = th.closest("table").tBodies[0], rows = Array.from(tb.rows), num = th.dataset.t === "n";
    var dir = th.dataset.dir === "desc" ? 1 : -1; th.dataset.dir = dir === 1 ? "asc" : "desc";
    rows.sort(function(a, b) {{
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      return dir * (num ? parseFloat(x) - parseFloat(y) : x.localeCompare(y));
    }});
    rows.forEach(function(r) {{ tb.appendChild(r); }});
  }});
}});
</script></body></html>
"""


def render_qc(vol, labels: np.ndarray, report: dict) -> tuple:
    """(HTML page, {file name: PNG bytes}) in memory."""
    orient = Orientation.of(vol.direction)
    can = orient.canonical_volume(vol)
    lab_c = orient.to_canonical(labels)
    overview = _png(overview_picture(can.array, can, report["nodes"]))
    pngs = {n["id"]: _png(node_picture(can.array, lab_c, can, n)) for n in report["nodes"]
            if n["long_axis_ends_mm"] is not None}
    files = {"overview.png": overview, **{f"node_{i:03d}.png": data for i, data in pngs.items()}}
    return _page(report, overview, pngs), files


def qc_outputs(page: str, files: dict) -> dict:
    """The QC folder and page as outputs of a save (`lnrt.outputs.Output`), written all-or-nothing with
    the other files."""
    from .outputs import Output

    def folder(tmp: Path) -> None:
        for name, data in files.items():
            (tmp / name).write_bytes(data)

    return {"qc_dir": Output(folder, folder=True),
            "qc_html": Output(lambda p: p.write_text(page, encoding="utf-8"))}
