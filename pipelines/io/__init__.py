"""Readers: geometry from headers, and streamed pixel statistics, for every supported format."""

from pipelines.io.formats import FileFormat, detect_format, strip_image_suffix
from pipelines.io.stats import PixelStats

__all__ = ["FileFormat", "PixelStats", "detect_format", "strip_image_suffix"]
