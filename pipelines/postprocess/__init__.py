"""Post-processing of label maps in physical units, and polygons in the source CRS."""
