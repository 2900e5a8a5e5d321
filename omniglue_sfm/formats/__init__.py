"""The files between stages and the files users bring: HDF5 features/matches, pairs.txt and
poses.txt, source records, an output folder's records, hloc's files, photos and masks.

The contract of every file is in docs/design.md, section 1."""
