"""Pictures of every stage: matches, keypoints by track length, 3D renders, PLY and HTML."""
