"""Writers of segmentation outputs in the source geometry (NIfTI, GeoTIFF/COG, PNG)."""
