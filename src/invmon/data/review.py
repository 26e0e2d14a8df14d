"""The review page of an audit: one self-contained HTML file for the people who act on the flags.

An inventory-control lead opens ``review.html`` (offline, or as an HTML artifact in the Kubeflow
UI) to decide which flagged bins are worth a walk. On top: bins scored, flagged, the flag rate,
the threshold and the bins skipped by reason. Below: every flagged bin, most unlikely recorded
count first, with its photo, recorded and predicted count, confidence and the model's
probabilities over the counts. Sorting and filtering run in a few lines of inline JavaScript, so
the page needs no server and loads nothing from outside.

The page stays small at scale: only the first ``thumbnails`` flagged bins carry a photo (a small
JPEG inside the page as a data URI); the rest are listed without one. The rows travel as one JSON
document that the script draws, which costs far fewer bytes per bin than table markup.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A thumbnail's longest side and JPEG quality: enough to count items by eye, about 5-10 kB each.
THUMBNAIL_SIDE, THUMBNAIL_QUALITY = 192, 70


@dataclass(frozen=True)
class FlaggedRow:
    """One flagged bin as the page shows it."""

    bin_id: str
    recorded_count: int
    predicted_count: int
    confidence: float
    recorded_probability: float
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class ReviewSummary:
    """The numbers on top of the page."""

    source: str
    scorer: str
    scored: int
    flagged: int
    threshold: float
    skipped: dict[str, int]

    @property
    def flag_rate(self) -> float:
        """Share of the scored bins that were flagged (0 when none was scored)."""
        return self.flagged / self.scored if self.scored else 0.0


def thumbnail(image: bytes) -> str | None:
    """A small JPEG of a bin photo as a data URI, or None when the photo does not decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as photo:
            photo = photo.convert("RGB")
            photo.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            buffer = io.BytesIO()
            photo.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY, optimize=True)
    except (UnidentifiedImageError, OSError) as err:
        log.warning("no thumbnail: %s", err)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def ranked(rows: Sequence[FlaggedRow]) -> list[FlaggedRow]:
    """Most unlikely recorded count first (ties: by bin id, so the order is reproducible)."""
    return sorted(rows, key=lambda r: (r.recorded_probability, r.bin_id))


def build_page(
    summary: ReviewSummary,
    rows: Sequence[FlaggedRow],
    classes: Sequence[int],
    read_image: Callable[[str], bytes | None],
    thumbnails: int = 200,
) -> str:
    """The review page: ``summary`` on top, ``rows`` ranked below; the first ``thumbnails`` rows
    get a photo read with ``read_image(bin_id)`` (None: no photo for that bin)."""
    data = []
    for rank, row in enumerate(ranked(rows), start=1):
        image = read_image(row.bin_id) if rank <= thumbnails else None
        data.append(
            [
                rank,
                row.bin_id,
                row.recorded_count,
                row.predicted_count,
                round(row.confidence, 4),
                round(row.recorded_probability, 4),
                [round(p, 3) for p in row.probabilities],
                thumbnail(image) if image else None,
            ]
        )
    document = {"classes": list(classes), "rows": data}
    # "</" inside a script element would end it early; JSON allows the escaped form.
    payload = json.dumps(document, separators=(",", ":")).replace("</", "<\\/")
    return _PAGE.format(
        title="Audit review",
        summary=_summary_html(summary, len(rows), thumbnails),
        classes="".join(f"<option>{c}</option>" for c in classes),
        payload=payload,
        style=_STYLE,
        script=_SCRIPT,
    )


def _summary_html(summary: ReviewSummary, listed: int, thumbnails: int) -> str:
    skipped = sum(summary.skipped.values())
    reasons = ", ".join(f"{html.escape(r)}: {n}" for r, n in sorted(summary.skipped.items()))
    cells = [
        ("bins scored", f"{summary.scored}"),
        ("flagged", f"{summary.flagged}"),
        ("flag rate", f"{summary.flag_rate:.1%}"),
        ("threshold", f"{summary.threshold:g}"),
        ("skipped", f"{skipped}" + (f" ({reasons})" if reasons else "")),
    ]
    boxes = "".join(
        f"<div class='box'><div class='k'>{k}</div><div class='v' data-summary='{k}'>{v}</div>"
        "</div>"
        for k, v in cells
    )
    note = (
        f"Flagged bins, the most unlikely recorded count first. Photos shown for the first "
        f"{min(thumbnails, listed)} of {listed}. Scored by {html.escape(summary.scorer)} on "
        f"{html.escape(summary.source)}."
    )
    return f"<div class='boxes'>{boxes}</div><p class='note'>{note}</p>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:20px;color:#222}
h1{font-size:1.4em;margin:0 0 12px}
.boxes{display:flex;gap:12px;flex-wrap:wrap}
.box{border:1px solid #ccc;border-radius:6px;padding:8px 14px;background:#fafafa}
.k{font-size:.8em;color:#666}.v{font-size:1.3em;font-weight:600}
.note{color:#555}.controls{margin:10px 0}.controls>*{margin-right:12px}
table{border-collapse:collapse}
td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right;vertical-align:middle}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0}
td.id{text-align:left;font-family:monospace;font-size:1.1em}
img{display:block;max-height:96px;border-radius:3px}
.bars{display:flex;align-items:flex-end;gap:2px;height:48px}
.r{color:#d9534f}.b{color:#2c6fbb}
.bar{width:18px;background:#8aa9d6;position:relative;font-size:9px}
.bar.rec{background:#d9534f}.bar.pred{background:#2c6fbb}
.bars span{position:absolute;bottom:-12px;left:0;right:0;text-align:center;color:#444}
.probs td{padding-bottom:14px}
"""

# The page's only code: draws the rows from the JSON payload, sorts on a header click, filters.
_SCRIPT = """
const D=JSON.parse(document.getElementById('data').textContent);
const cols=['rank','bin_id','recorded','predicted','confidence','p_recorded'];
let key=0,dir=1;
function bars(ps,rec,pred){return '<div class="bars">'+ps.map((p,i)=>{const c=D.classes[i];
 const k=c===rec?' rec':(c===pred?' pred':'');return '<div class="bar'+k+'" title="'+c+': '+p+
 '" style="height:'+Math.max(1,Math.round(p*48))+'px"><span>'+c+'</span></div>'}).join('')+
 '</div>'}
function draw(){const q=document.getElementById('q').value.trim();
 const r=document.getElementById('rec').value,p=document.getElementById('pred').value;
 const only=document.getElementById('photos').checked;
 let rows=D.rows.filter(x=>(!q||x[1].includes(q))&&(r===''||x[2]==r)&&(p===''||x[3]==p)&&
  (!only||x[7]));
 rows.sort((a,b)=>(a[key]<b[key]?-1:a[key]>b[key]?1:0)*dir);
 document.getElementById('shown').textContent=rows.length+' of '+D.rows.length+' flagged bins';
 document.getElementById('body').innerHTML=rows.map(x=>'<tr class="probs"><td>'+x[0]+
  '</td><td>'+(x[7]?'<img alt="bin '+x[1]+'" src="'+x[7]+'">':'')+'</td><td class="id">'+x[1]+
  '</td><td>'+x[2]+'</td><td>'+x[3]+'</td><td>'+x[4].toFixed(3)+'</td><td>'+
  x[5].toFixed(4)+'</td><td>'+bars(x[6],x[2],x[3])+'</td></tr>').join('')}
document.querySelectorAll('th[data-col]').forEach(th=>th.onclick=()=>{const c=+th.dataset.col;
 dir=(key===c)?-dir:1;key=c;draw()});
['q','rec','pred','photos'].forEach(i=>document.getElementById(i).oninput=draw);
draw();
"""

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head><body><h1>{title}</h1>{summary}
<div class="controls"><input id="q" placeholder="bin id contains"> recorded
<select id="rec"><option value="">any</option>{classes}</select> predicted
<select id="pred"><option value="">any</option>{classes}</select>
<label><input type="checkbox" id="photos"> with photo only</label> <span id="shown"></span></div>
<table><thead><tr><th data-col="0">rank</th><th>photo</th><th data-col="1">bin</th>
<th data-col="2">recorded</th><th data-col="3">predicted</th><th data-col="4">confidence</th>
<th data-col="5">p(recorded)</th><th>probabilities over counts<br>
<small><b class="r">&#9632;</b> recorded <b class="b">&#9632;</b> predicted</small>
</th></tr></thead>
<tbody id="body"></tbody></table>
<script type="application/json" id="data">{payload}</script>
<script>{script}</script></body></html>
"""
