"""The QA report as one self-contained HTML page (no network: images inlined as base64 PNG,
the map an inline SVG, the table sorted by a few lines of inline script).

:func:`render_report` turns a :class:`ReportPage` into the page's text; building the page from
a batch is :mod:`pipelines.services.qa_report`'s.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from string import Template
from typing import Any

__all__ = ["ReportPage", "ReportRow", "Thumbnail", "render_report"]


@dataclass(frozen=True)
class ReportRow:
    """One file of the batch, as the table shows it."""

    case_id: str
    status: str
    seconds: float
    measures: str
    confidence: float | None
    drift: str
    error: str = ""


@dataclass(frozen=True)
class Thumbnail:
    """An overlay thumbnail (PNG bytes) of one file, and why it is shown."""

    case_id: str
    confidence: float | None
    png: bytes
    group: str  # "least confident" or "random"


@dataclass(frozen=True)
class ReportPage:
    """Everything the report shows."""

    title: str
    created_utc: str
    summary: Mapping[str, Any]
    model: Mapping[str, Any]
    settings: Mapping[str, Any]
    rows: Sequence[ReportRow]
    thumbnails: Sequence[Thumbnail] = ()
    footprints: Sequence[tuple[str, dict[str, Any]]] = field(default_factory=tuple)


_PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th.sortable{cursor:pointer;background:#f2f2f2}th.sortable:hover{background:#e4e4e4}
td.num{text-align:right}tr.failed td{background:#fde8e8}tr.drift td.drift{background:#fff4d6}
.kv td:first-child{font-weight:600}.thumbs{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:170px;font-size:12px}figure img{display:block;image-rendering:pixelated}
.low{color:#b00}svg{border:1px solid #ccc;background:#f8fbff}
</style></head><body>
<h1>$title</h1>
<p>Written $created. Confidence is 1 when the model is certain of every pixel (see README,
&ldquo;Reading the QA report&rdquo;); drift flags say how an input differs from the training
data.</p>
<h2>Summary</h2>$summary
<h2>Files</h2><p>Click a column header to sort.</p>$table
<h2>Least confident and random files</h2><div class="thumbs">$thumbnails</div>
$map
<h2>Model</h2>$model
<h2>Batch settings</h2>$settings
<script>
document.querySelectorAll("th.sortable").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var body = document.getElementById("files").tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var ascending = header.getAttribute("data-order") !== "asc";
    header.setAttribute("data-order", ascending ? "asc" : "desc");
    rows.sort(function (a, b) {
      var x = a.cells[column].getAttribute("data-sort"), y = b.cells[column].getAttribute("data-sort");
      var nx = parseFloat(x), ny = parseFloat(y);
      var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
</script>
</body></html>
""")

_COLUMNS = ("file", "status", "seconds", "measures", "confidence", "drift", "error")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _key_values(values: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_e(key)}</td><td>{_e(value)}</td></tr>" for key, value in values.items()
    )
    return f'<table class="kv">{rows}</table>'


def _cell(text: str, sort: Any, css: str = "") -> str:
    klass = f' class="{css}"' if css else ""
    return f'<td{klass} data-sort="{_e(sort)}">{_e(text)}</td>'


def _row(row: ReportRow) -> str:
    confidence = "" if row.confidence is None else f"{row.confidence:.3f}"
    css = " ".join(
        c for c in ("failed" if row.status == "failed" else "", "drift" if row.drift else "") if c
    )
    cells = (
        _cell(row.case_id, row.case_id),
        _cell(row.status, row.status),
        _cell(f"{row.seconds:.2f}", row.seconds, "num"),
        _cell(row.measures, row.measures),
        _cell(confidence, -1 if row.confidence is None else row.confidence, "num"),
        _cell(row.drift, row.drift, "drift"),
        _cell(row.error, row.error),
    )
    klass = f' class="{css}"' if css else ""
    return f'<tr{klass} id="row-{_e(row.case_id)}">{"".join(cells)}</tr>'


def _table(rows: Sequence[ReportRow]) -> str:
    head = "".join(f'<th class="sortable">{name}</th>' for name in _COLUMNS)
    body = "".join(_row(row) for row in rows)
    return f'<table id="files"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _thumbnail(item: Thumbnail) -> str:
    data = base64.b64encode(item.png).decode("ascii")
    score = "no score" if item.confidence is None else f"confidence {item.confidence:.3f}"
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(item.case_id)}">'
        f"<figcaption>{_e(item.case_id)}<br>{_e(score)} ({_e(item.group)})</figcaption></figure>"
    )


def _rings(geometry: dict[str, Any]) -> list[list[tuple[float, float]]]:
    if geometry.get("type") == "MultiPolygon":
        return [list(map(tuple, polygon[0])) for polygon in geometry["coordinates"]]
    return [list(map(tuple, geometry["coordinates"][0]))]


def _map(footprints: Sequence[tuple[str, dict[str, Any]]], width: int = 640) -> str:
    """An SVG of the footprints (lon/lat, north up), scaled to their joint bounds."""
    if not footprints:
        return ""
    points = [p for _, shape in footprints for ring in _rings(shape) for p in ring]
    west, east = min(p[0] for p in points), max(p[0] for p in points)
    south, north = min(p[1] for p in points), max(p[1] for p in points)
    span_x = max(east - west, 1e-9) * math.cos(math.radians((north + south) / 2))
    span_y = max(north - south, 1e-9)
    height = max(120, min(480, round(width * span_y / max(span_x, 1e-9))))
    pad = 10

    def xy(point: tuple[float, float]) -> str:
        x = pad + (point[0] - west) / max(east - west, 1e-9) * (width - 2 * pad)
        y = pad + (north - point[1]) / max(north - south, 1e-9) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    shapes = "".join(
        f'<polygon points="{" ".join(xy(p) for p in ring)}" fill="#3a7bd5" fill-opacity="0.25" '
        f'stroke="#1d4f91" stroke-width="1"><title>{_e(case_id)}</title></polygon>'
        for case_id, shape in footprints
        for ring in _rings(shape)
    )
    bounds = f"W {west:.5f}, S {south:.5f}, E {east:.5f}, N {north:.5f} (WGS 84)"
    return (
        "<h2>Footprints</h2>"
        f"<p>{len(footprints)} scene(s); bounds {_e(bounds)}; also in the GeoJSON beside this "
        "report.</p>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="footprints">{shapes}</svg>'
    )


def render_report(page: ReportPage) -> str:
    """The report's HTML (UTF-8 text, no external reference)."""
    thumbnails = "".join(_thumbnail(item) for item in page.thumbnails) or "<p>No mask to show.</p>"
    return _PAGE.substitute(
        title=_e(page.title),
        created=_e(page.created_utc),
        summary=_key_values(page.summary),
        table=_table(page.rows),
        thumbnails=thumbnails,
        map=_map(page.footprints),
        model=_key_values(page.model),
        settings=_key_values(page.settings),
    )
