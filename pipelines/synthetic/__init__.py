"""Seeded synthetic datasets: NIfTI volumes, GeoTIFF tiles (+ GeoJSON) and 2D microscopy images.

Used by the demo (:func:`make_sample_archive`) and by the tests. Everything is drawn from
``numpy.random.default_rng(seed)``: the same arguments give the same arrays. Files are small and
objects are easy to learn (each class has its own intensity in each channel), so a few minutes of
CPU training can fit them. Every function writes only under the folder it is given.

Models fitted to these datasets in closed form, for tests and benchmarks that need a model
without training one, are in :mod:`pipelines.synthetic.models` (not imported here: it loads
torch).
"""

from pipelines.synthetic._common import CT_INTERCEPT, VolumeLayout
from pipelines.synthetic.images import make_image_dataset
from pipelines.synthetic.packing import make_sample_archive, pack_archive
from pipelines.synthetic.rasters import custom_albers_wkt, make_raster_dataset
from pipelines.synthetic.volumes import make_volume_dataset, volume_affine

__all__ = [
    "CT_INTERCEPT",
    "VolumeLayout",
    "custom_albers_wkt",
    "make_image_dataset",
    "make_raster_dataset",
    "make_sample_archive",
    "make_volume_dataset",
    "pack_archive",
    "volume_affine",
]
