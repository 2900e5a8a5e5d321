"""Cameras and poses: intrinsics and camera grouping, PnP, quarter-turns of images, ground-truth scenes."""
