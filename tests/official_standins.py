"""Stand-ins for the released OmniGlue's three files, built in the tests (the real ones cannot be
downloaded here). They have the released INTERFACES, not the released weights: nothing measured
with them says anything about the real model's accuracy.

* ``sp_v6``: a TF1 SavedModel with SuperPoint's tensor names (``superpoint/image:0`` ->
  ``superpoint/prob_nms:0``, ``superpoint/descriptors:0``) and sp_v6's data flow: a corner
  response through SuperPoint's 65-way softmax (a "no keypoint" channel) and depth-to-space, box
  NMS (4-px boxes, IoU 0.1) over the pixels with probability >= 0.001 (taken among 3x3 local maxima,
  to stay fast), and coarse descriptors (dense-SIFT-like, one per 8x8 cell) upsampled x8 with TF1's
  bilinear resize (cell i at pixel 8i) and L2-normalised after.
* ``og_export``: a TF2 SavedModel whose ``serving_default`` signature has the released inputs
  (dynamic N and M) and output ``soft_assignment`` (1, N+1, M+1): a dual softmax, with a dustbin
  row and column, of SuperPoint descriptor similarity, DINO feature similarity and small
  position and score terms (keypoints normalised by the width/height inputs), so the matches are
  geometrically meaningful and every input changes the output.
* ``dinov2_vitb14_pretrain.pth``: a DINOv2 ViT-B/14 checkpoint with the official key names and
  768-d shapes but ONE block (random weights), which our loader reads like the real 12-block one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ENV = {"sp_v6": "OMNIGLUE_SFM_SP_V6", "og_export": "OMNIGLUE_SFM_OG_EXPORT",
       "dinov2_vitb14": "OMNIGLUE_SFM_DINOV2_VITB14"}


def _gauss(sigma: float, size: int) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g).astype(np.float32)[:, :, None, None]


def build_sp_v6(path: Path, seed: int = 0, gain: float = 150.0, dustbin: float = 8.0) -> Path:
    """A TF1 SavedModel with sp_v6's tensor names and data flow (see the module doc)."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default(), tf1.name_scope("superpoint"):
        image = tf1.placeholder(tf.float32, [None, None, None, 1], name="image")

        def conv(x, kernel):
            return tf.nn.conv2d(x, tf.constant(kernel), 1, "SAME")

        blur = conv(image, _gauss(1.0, 5))
        sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 8
        gx, gy = conv(blur, sobel[:, :, None, None]), conv(blur, sobel.T.copy()[:, :, None, None])
        window = _gauss(1.5, 7)
        ixx, iyy, ixy = conv(gx * gx, window), conv(gy * gy, window), conv(gx * gy, window)
        response = (ixx * iyy - ixy * ixy) / (ixx + iyy + 1e-8)  # harmonic mean of the eigenvalues
        logits = gain * tf.sqrt(tf.nn.relu(response) + 1e-12)
        cells = tf.nn.space_to_depth(logits, 8)  # (1, H/8, W/8, 64)
        no_point = tf.ones_like(cells[..., :1]) * dustbin
        prob = tf.nn.softmax(tf.concat([cells, no_point], -1), -1)[..., :64]
        prob = tf.nn.depth_to_space(prob, 8)[0, :, :, 0]  # (H, W)
        peak = tf.equal(prob, tf.nn.max_pool2d(prob[None, :, :, None], 3, 1, "SAME")[0, :, :, 0])
        pts = tf.where(tf.logical_and(prob >= 0.001, peak))
        ptsf = tf.cast(pts, tf.float32)
        boxes = tf.concat([ptsf - 2.0, ptsf + 2.0], 1)
        scores = tf.gather_nd(prob, pts)
        keep = tf.image.non_max_suppression(boxes, scores, tf.shape(boxes)[0], 0.1)
        nms = tf.scatter_nd(tf.gather(pts, keep), tf.gather(scores, keep), tf.shape(prob, out_type=tf.int64))
        prob_nms = tf.identity(nms[None], name="prob_nms")
        angles = np.arange(8) * np.pi / 4
        oriented = tf.nn.relu(tf.concat([gx * float(np.cos(a)) + gy * float(np.sin(a)) for a in angles], -1))
        hist = tf.nn.avg_pool2d(oriented, 8, 8, "SAME")  # (1, H/8, W/8, 8)
        gather = np.zeros((4, 4, 8, 128), np.float32)  # 4x4 neighbouring cells -> 128 channels
        for i in range(4):
            for j in range(4):
                gather[i, j, np.arange(8), (i * 4 + j) * 8 + np.arange(8)] = 1
        coarse = tf.nn.l2_normalize(conv(hist, gather), -1)
        coarse = tf.nn.l2_normalize(tf.minimum(coarse, 0.2), -1)
        project = (rng.standard_normal((1, 1, 128, 256)) / math.sqrt(128)).astype(np.float32)
        coarse = conv(coarse, project)
        dense = tf1.image.resize_bilinear(coarse, tf.shape(image)[1:3])  # TF1: cell i at pixel 8i
        descriptors = tf.identity(tf.nn.l2_normalize(dense, -1), name="descriptors")
        with tf1.Session(graph=graph) as session:
            builder = tf1.saved_model.Builder(str(path))
            signature = tf1.saved_model.predict_signature_def(
                {"image": image}, {"prob_nms": prob_nms, "descriptors": descriptors})
            builder.add_meta_graph_and_variables(session, [tf1.saved_model.SERVING],
                                                 signature_def_map={"serving_default": signature})
            builder.save()
    return Path(path)


def og_input_specs(tf) -> list:
    """The released serving signature's inputs, in the stand-in's argument order."""
    specs = []
    for k in ("0", "1"):
        specs += [tf.TensorSpec([1, None, 2], tf.float32, name=f"keypoints{k}"),
                  tf.TensorSpec([1, None, 256], tf.float32, name=f"descriptors{k}"),
                  tf.TensorSpec([1, None, 1], tf.float32, name=f"scores{k}"),
                  tf.TensorSpec([1, None, 768], tf.float32, name=f"descriptors{k}_dino"),
                  tf.TensorSpec([1], tf.int32, name=f"width{k}"),
                  tf.TensorSpec([1], tf.int32, name=f"height{k}")]
    return specs


def build_og_export(path: Path, specs: list | None = None, output: str = "soft_assignment") -> Path:
    """A TF2 SavedModel with og_export's serving signature (``specs`` / ``output`` change it, for
    the loader's checks)."""
    import tensorflow as tf

    class StandIn(tf.Module):
        @tf.function(input_signature=specs or og_input_specs(tf))
        def serve(self, keypoints0, descriptors0, scores0, descriptors0_dino, width0, height0,
                  keypoints1, descriptors1, scores1, descriptors1_dino, width1, height1):
            sim = tf.matmul(descriptors0[0], descriptors1[0], transpose_b=True) / 0.05
            g0 = tf.math.l2_normalize(descriptors0_dino[0], -1)
            g1 = tf.math.l2_normalize(descriptors1_dino[0], -1)
            sim += tf.matmul(g0, g1, transpose_b=True)
            size0 = tf.concat([tf.cast(width0, tf.float32), tf.cast(height0, tf.float32)], 0)
            size1 = tf.concat([tf.cast(width1, tf.float32), tf.cast(height1, tf.float32)], 0)
            p0, p1 = keypoints0[0] / size0, keypoints1[0] / size1
            sim -= 0.5 * tf.reduce_sum(tf.square(p0[:, None] - p1[None]), -1)
            sim += 0.1 * (scores0[0] + tf.transpose(scores1[0]))
            n, m = tf.shape(sim)[0], tf.shape(sim)[1]
            logits = tf.concat([tf.concat([sim, tf.fill([n, 1], 14.0)], 1), tf.fill([1, m + 1], 14.0)], 0)
            soft = tf.nn.softmax(logits, 1) * tf.nn.softmax(logits, 0)
            return {output: soft[None]}

    module = StandIn()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return Path(path)


def dinov2_state(depth: int = 1, seed: int = 0, dim: int = 768) -> dict[str, torch.Tensor]:
    """Random DINOv2 ViT/14 weights with the official key names and shapes."""
    from omniglue_sfm.guidance.dinov2 import DINOv2ViT

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in DINOv2ViT(dim, depth).state_dict().items():
        if key.endswith("gamma"):
            state[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=gen)
        elif value.ndim >= 2 and key not in ("cls_token", "pos_embed", "mask_token"):
            state[key] = torch.randn(value.shape, generator=gen) / math.sqrt(math.prod(value.shape[1:]))
        else:
            state[key] = 0.1 * torch.randn(value.shape, generator=gen) + (1.0 if "norm" in key and
                                                                         key.endswith("weight") else 0.0)
    return state


def build_dinov2(path: Path, depth: int = 1, seed: int = 0) -> Path:
    torch.save(dinov2_state(depth, seed), path)
    return Path(path)


def build_all(folder: Path) -> dict[str, Path]:
    """The three stand-ins in ``folder``: name -> path (what the ``OMNIGLUE_SFM_*`` variables take)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"sp_v6": build_sp_v6(folder / "sp_v6"), "og_export": build_og_export(folder / "og_export"),
            "dinov2_vitb14": build_dinov2(folder / "dinov2_vitb14_pretrain.pth")}


def use(monkeypatch, paths: dict[str, Path]) -> None:
    """Point the weights policy at the stand-ins."""
    for name, path in paths.items():
        monkeypatch.setenv(ENV[name], str(path))
