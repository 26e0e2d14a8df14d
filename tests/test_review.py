"""The audit's review page: its numbers, its ranking, its photos, and its size at scale."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from invmon.data.review import FlaggedRow, ReviewSummary, build_page

CLASSES = [0, 1, 2, 3, 4, 5]


def payload(page: str) -> dict:
    """The rows the page's script draws (the JSON document inside it)."""
    match = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    assert match, "no data element"
    return json.loads(match.group(1))


def summary_values(page: str) -> dict[str, str]:
    return dict(re.findall(r"data-summary='([^']+)'>([^<]*)<", page))


def flag_rows(count: int, seed: int = 0) -> list[FlaggedRow]:
    """``count`` flagged bins as an audit makes them, without running a model."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        probabilities = rng.dirichlet(np.ones(len(CLASSES)))
        recorded = int(rng.integers(len(CLASSES)))
        top = int(np.argmax(probabilities))
        rows.append(
            FlaggedRow(
                bin_id=f"{100000 + i}",
                recorded_count=CLASSES[recorded],
                predicted_count=CLASSES[top],
                confidence=round(float(probabilities[top]), 4),
                recorded_probability=round(float(probabilities[recorded]) / 10, 4),
                probabilities=tuple(round(float(p), 4) for p in probabilities),
            )
        )
    return rows


def photos(raw_dir: Path):
    """A reader that answers every bin id with one of the synthetic photos."""
    images = [p.read_bytes() for p in sorted((raw_dir / "bin-images").glob("*.jpg"))]
    return lambda bin_id: images[int(bin_id) % len(images)]


SUMMARY = ReviewSummary(
    source="/data/site-a",
    scorer="model /models/v3",
    scored=400,
    flagged=25,
    threshold=0.1,
    skipped={"invalid metadata": 2, "metadata without image": 1},
)


@pytest.mark.parametrize("thumbnails", [0, 10, 200])
def test_page_shows_the_summary_ranks_by_unlikeliness_and_embeds_the_first_n_photos(
    raw_dir, thumbnails
):
    rows = flag_rows(25)
    page = build_page(SUMMARY, rows, CLASSES, photos(raw_dir), thumbnails=thumbnails)
    assert summary_values(page) == {
        "bins scored": "400",
        "flagged": "25",
        "flag rate": "6.2%",
        "threshold": "0.1",
        "skipped": "3 (invalid metadata: 2, metadata without image: 1)",
    }
    data = payload(page)
    assert data["classes"] == CLASSES
    listed = data["rows"]
    assert [r[0] for r in listed] == list(range(1, 26))
    unlikeliness = [r[5] for r in listed]
    assert unlikeliness == sorted(unlikeliness), "most unlikely recorded count first"
    by_id = {r.bin_id: r for r in rows}
    for rank, bin_id, recorded, predicted, confidence, p_recorded, probs, thumb in listed:
        source = by_id[bin_id]
        assert (recorded, predicted, confidence, p_recorded) == (
            source.recorded_count,
            source.predicted_count,
            source.confidence,
            source.recorded_probability,
        )
        assert probs == [round(p, 3) for p in source.probabilities]
        assert (thumb is not None) == (rank <= thumbnails)
        if thumb:
            assert thumb.startswith("data:image/jpeg;base64,")
    assert page.count("data:image/jpeg;base64,") == min(thumbnails, len(rows))


def test_page_loads_nothing_from_outside(raw_dir):
    page = build_page(SUMMARY, flag_rows(5), CLASSES, photos(raw_dir))
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert "http://" not in page and "https://" not in page


def test_a_bin_id_cannot_end_the_script_early(raw_dir):
    row = flag_rows(1)[0]
    odd = FlaggedRow("</script><b>", *list(vars(row).values())[1:])
    page = build_page(SUMMARY, [odd], CLASSES, lambda _: None)
    assert payload(page)["rows"][0][1] == "</script><b>"


def test_an_undecodable_photo_is_listed_without_a_thumbnail():
    page = build_page(SUMMARY, flag_rows(2), CLASSES, lambda _: b"\xff\xd8 not a jpeg")
    assert [r[7] for r in payload(page)["rows"]] == [None, None]


def test_ten_thousand_flags_make_a_page_of_at_most_5_mb(raw_dir, tmp_path):
    page = build_page(SUMMARY, flag_rows(10_000, seed=1), CLASSES, photos(raw_dir))
    size = len(page.encode("utf-8"))
    print(f"review page for 10,000 flags, 200 photos: {size / 1e6:.2f} MB")
    assert len(payload(page)["rows"]) == 10_000
    assert page.count("data:image/jpeg;base64,") == 200
    assert size <= 5_000_000


def test_audit_writes_the_review_page_in_flagged_order(raw_dir, model_dir, tmp_path):
    from invmon.stages.audit import AuditSettings, run

    summary = run(
        AuditSettings(
            source=str(raw_dir),
            out=str(tmp_path),
            model=str(model_dir),
            threshold=0.5,
            thumbnails=3,
        )
    )
    assert summary.flagged > 3, "the tiny model should flag several bins at threshold 0.5"
    page = (tmp_path / "review.html").read_text()
    with open(tmp_path / "flagged.csv", newline="") as handle:
        flagged = list(csv.DictReader(handle))
    listed = payload(page)["rows"]
    assert [r[1] for r in listed] == [r["bin_id"] for r in flagged]
    assert payload(page)["classes"] == summary.classes == CLASSES
    assert page.count("data:image/jpeg;base64,") == 3
    assert summary_values(page)["bins scored"] == "120"
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["classes"] == CLASSES


def test_audit_component_hands_the_page_to_the_kubeflow_ui(raw_dir, model_dir, tmp_path):
    from kfp import dsl

    from invmon import components

    review = dsl.HTML(name="review", uri=str(tmp_path / "review.html"))
    raw = dsl.Dataset(name="raw", uri=str(raw_dir))
    (part,) = components.plan_audit.python_func(raw=raw, parts=1)
    scores = dsl.Dataset(name="scores", uri=str(tmp_path / "scores"))
    components.audit.python_func(
        model=dsl.Model(name="model", uri=str(model_dir)),
        raw=raw,
        part=part,
        scores=scores,
        threshold=0.5,
        device="cpu",
    )
    components.merge_audit.python_func(
        parts=[scores],
        raw=raw,
        results=dsl.Dataset(name="results", uri=str(tmp_path / "results")),
        metrics=dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics")),
        flagged=dsl.Markdown(name="flagged", uri=str(tmp_path / "flagged.md")),
        review=review,
        thumbnails=200,
    )
    assert Path(review.path).read_text() == (tmp_path / "results" / "review.html").read_text()
