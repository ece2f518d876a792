"""Everything a run publishes: change classes, COGs, polygons, preview, manifest and the run folder."""
