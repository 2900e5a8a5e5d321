"""The 3D scene as files: PLY (points + frustum edges, for MeshLab or CloudCompare) and an
interactive plotly HTML page.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..formats import outputs
from .scene import MAP_CAMERA, QUERY_CAMERA, Scene3D, build_scene, default_view, load_model, read_query_poses


def write_ply(folder: Path | str, out: Path | str, poses: Path | str | None = None) -> dict:
    """Binary PLY: coloured points + frustum vertices, with the frustum wireframe as edges."""
    scene = build_scene(load_model(folder), read_query_poses(poses))
    verts, edges, ecolors = scene.edges()
    vcolors = np.zeros((len(verts), 3), np.uint8)
    for (a, b), c in zip(edges, ecolors, strict=True):
        vcolors[a] = vcolors[b] = c
    xyz = np.vstack([scene.points, verts]).astype(np.float32)
    rgb = np.vstack([scene.colors, vcolors]).astype(np.uint8)
    edges = edges + len(scene.points)
    rgb_fields = [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), *rgb_fields])
    etype = np.dtype([("vertex1", "<i4"), ("vertex2", "<i4"), *rgb_fields])
    vdata = np.empty(len(xyz), vtype)
    vdata["x"], vdata["y"], vdata["z"] = xyz.T
    vdata["red"], vdata["green"], vdata["blue"] = rgb.T
    edata = np.empty(len(edges), etype)
    edata["vertex1"], edata["vertex2"] = edges.T.astype(np.int32)
    edata["red"], edata["green"], edata["blue"] = ecolors.T
    header = "\n".join([
        "ply", "format binary_little_endian 1.0", "comment omniglue-sfm: points + camera frustums",
        f"element vertex {len(vdata)}", "property float x", "property float y", "property float z",
        "property uchar red", "property uchar green", "property uchar blue",
        f"element edge {len(edata)}", "property int vertex1", "property int vertex2",
        "property uchar red", "property uchar green", "property uchar blue", "end_header\n"])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vdata.tobytes())
        f.write(edata.tobytes())
    return {"points": int(len(scene.points)), "cameras": len(scene.frustums)}


PLOTLY_FOV_DEG = 45.0  # plotly.js draws 3D scenes with a 45 degree vertical field of view


def html_scene(scene: Scene3D, points: np.ndarray) -> dict:
    """plotly's ``layout.scene``: the first view is the PNG render's (:func:`default_view`: behind
    and above the cameras, looking where they look), not plotly's oblique default.

    plotly places the camera in a box of the axis ranges scaled to ``aspectratio`` and centred on
    the origin; the ranges and the ratio are given explicitly (in proportion to the data, as
    ``aspectmode="data"``) so that the view converts exactly."""
    drawn = np.vstack([points.reshape(-1, 3), *[np.vstack([f.center, f.corners]) for f in scene.frustums]])
    lo, hi = drawn.min(axis=0), drawn.max(axis=0)
    span = np.maximum(hi - lo, 1e-9 * max(float((hi - lo).max()), 1e-9))
    lo, hi = lo - span / 32, hi + span / 32  # plotly's own padding
    span, mid = hi - lo, (lo + hi) / 2
    ratio = span / span.max()
    view = default_view(scene, fov_deg=PLOTLY_FOV_DEG)

    def box(v: np.ndarray, point: bool = True) -> dict:
        n = ((v - mid) if point else v) / span * ratio
        return {axis: float(c) for axis, c in zip("xyz", n, strict=True)}

    axis = {"visible": False, "autorange": False}
    return {"aspectmode": "manual", "aspectratio": {a: float(r) for a, r in zip("xyz", ratio, strict=True)},
            "xaxis": {**axis, "range": [float(lo[0]), float(hi[0])]},
            "yaxis": {**axis, "range": [float(lo[1]), float(hi[1])]},
            "zaxis": {**axis, "range": [float(lo[2]), float(hi[2])]},
            "camera": {"eye": box(view.eye), "center": box(view.center), "up": box(view.up, point=False),
                       "projection": {"type": "perspective"}}}


def write_html(folder: Path | str, out: Path | str, poses: Path | str | None = None,
               offline: bool = True, max_points: int = 200_000) -> dict:
    """Interactive plotly page; ``offline`` embeds plotly.js (bigger file, works without internet)."""
    import plotly.graph_objects as go

    scene = build_scene(load_model(folder), read_query_poses(poses))
    pts, cols = scene.points, scene.colors
    if len(pts) > max_points:
        keep = np.random.default_rng(0).choice(len(pts), max_points, replace=False)
        pts, cols = pts[keep], cols[keep]
    fig = go.Figure()
    fig.add_trace(go.Scatter3d(
        x=pts[:, 0], y=pts[:, 1], z=pts[:, 2], mode="markers", name=f"{len(pts)} points",
        marker={"size": 1.5, "color": [f"rgb({r},{g},{b})" for r, g, b in cols]}, hoverinfo="skip"))
    for color, label in ((MAP_CAMERA, "map cameras"), (QUERY_CAMERA, "localized queries")):
        xs, ys, zs, names = [], [], [], []
        for f in (f for f in scene.frustums if f.color == color):
            c, k = f.center, f.corners
            for seq in ([c, k[0], k[1], c, k[2], k[3], c], [k[0], k[3]], [k[1], k[2]]):
                for p in seq:
                    xs.append(p[0])
                    ys.append(p[1])
                    zs.append(p[2])
                    names.append(f.name)
                xs.append(None)
                ys.append(None)
                zs.append(None)
                names.append(None)
        if xs:
            fig.add_trace(go.Scatter3d(x=xs, y=ys, z=zs, mode="lines", name=label, text=names,
                                       hoverinfo="text", line={"color": f"rgb{color}", "width": 3}))
    fig.update_layout(scene=html_scene(scene, pts),
                      margin={"l": 0, "r": 0, "t": 30, "b": 0}, title=str(outputs.find_model(folder)),
                      paper_bgcolor="white")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(out, include_plotlyjs=True if offline else "cdn")
    return {"points": int(len(pts)), "cameras": len(scene.frustums)}

