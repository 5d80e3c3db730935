"""The QA report of a batch: per-file measures, overlay thumbnails, footprints, the HTML page."""
