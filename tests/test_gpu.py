"""CUDA checks (marker ``gpu``): skipped cleanly on machines without a GPU, such as CI."""

from __future__ import annotations

import pytest
import torch

from omniglue_sfm.matchers.base import collate_pairs
from omniglue_sfm.matchers.omniglue_plugin import OmniGlueMatcher
from omniglue_sfm.runtime import devices as runtime

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _features(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kpts = torch.rand(n, 2, generator=g) * torch.tensor([640.0, 480.0])
    desc = torch.nn.functional.normalize(torch.randn(n, 128, generator=g), dim=1)
    return {"keypoints": kpts, "descriptors": desc,
            "scores": torch.rand(n, generator=g), "image_size": torch.tensor([640.0, 480.0]),
            "guidance": torch.randn(n, 128, generator=g)}


def test_shipped_omniglue_cuda_autocast_agrees_with_cpu():
    """The shipped checkpoint on CUDA under the match stage's autocast finds the same matches as
    on the CPU in float32 (a pair that matches itself up to a small shift, so matches exist)."""
    base = _features(1024, 0)
    moved = {**base, "keypoints": base["keypoints"] + 2.0}
    data = collate_pairs([(base, moved), (_features(700, 1), _features(900, 2))])
    matcher = OmniGlueMatcher({"weights": "omniglue"})
    cpu = matcher(data)["matches0"]
    gpu_matcher = matcher.to("cuda")
    with torch.inference_mode(), runtime.autocast(torch.device("cuda")):
        gpu = gpu_matcher({k: v.cuda() for k, v in data.items()})["matches0"].cpu()
    assert (cpu[0] >= 0).sum() > 500
    agree = (cpu == gpu).float().mean().item()
    assert agree > 0.97, agree
