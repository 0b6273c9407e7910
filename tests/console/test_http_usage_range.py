"""The console's usage page over plain HTTP, for ranges as wide as the form accepts: as many
points as for any range, never one per week of the whole span."""

from __future__ import annotations

import json
import re

from tests.console.test_http import served, signed_in
from tests.support.gateway import Gateway

__all__ = ["served"]  # the module-scoped fixture, shared with test_http

WEEK_S = 7 * 86400


def test_a_range_of_millennia_is_sixty_points_not_half_a_million(
    served: tuple[Gateway, str, str, str],
) -> None:
    """Year 1 to 9999 (what a user may type): about sixty points of whole weeks, the one
    stored record counted in one of them; before, 521,724 weekly points (33 MB of chart data
    built and sent per request)."""
    gateway, _, user, _ = served
    with signed_in(gateway, user) as client:
        page = client.get(
            "/ui/usage", params={"since": "0001-01-01T00:00", "until": "9999-12-31T23:59"}
        )
    data = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', page.text)
    assert data is not None, page.text[:2000]
    charts = json.loads(data.group(1))
    step = re.search(r"one point per (\d+) s", page.text)
    assert step is not None
    points = len(charts["x"])
    assert (page.status_code, int(step.group(1)) % WEEK_S, points <= 61) == (200, 0, True)
    assert sum(sum(v) for v in charts["requests_by_model"].values()) == 1.0
