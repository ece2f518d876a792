"""Blocks of work: the window lattice over the scene, the blend, inference per block, the stitched mosaic."""
