"""omniglue-sfm: Structure-from-Motion with OmniGlue, COLMAP models through pycolmap."""

__version__ = "0.1.0"
