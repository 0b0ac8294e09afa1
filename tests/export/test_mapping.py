"""Settings in the targets' own forms: names, cron lines, EventBridge expressions."""

from __future__ import annotations

import pytest

from jupyter_faas.errors import ExportError
from jupyter_faas.export.mapping import aws_cron, aws_rate, cron_for_every, dns_name, logical_id


@pytest.mark.parametrize(
    ("seconds", "cron", "rate"),
    [
        (60, "* * * * *", "rate(1 minute)"),
        (300, "*/5 * * * *", "rate(5 minutes)"),
        (3600, "0 * * * *", "rate(1 hour)"),
        (7200, "0 */2 * * *", "rate(2 hours)"),
        (86400, "0 0 * * *", "rate(1 day)"),
        (30, None, None),  # below a minute: neither cron nor EventBridge can say it
        (420, None, "rate(7 minutes)"),  # 7 minutes does not divide an hour: cron would drift at each hour
        (90, None, None),
    ],
)
def test_every_maps_to_cron_and_rate_only_where_they_mean_alike(
    seconds: float, cron: str | None, rate: str | None
) -> None:
    assert cron_for_every(seconds) == cron
    assert aws_rate(seconds) == rate


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("*/5 * * * *", "cron(*/5 * * * ? *)"),
        ("0 9 * * 1-5", "cron(0 9 ? * 2-6 *)"),  # EventBridge counts Sunday as 1
        ("0 9 * * 0", "cron(0 9 ? * 1 *)"),
        ("0 9 1 * *", "cron(0 9 1 * ? *)"),
        ("0 9 1 * 1", None),  # a day of the month and of the week: EventBridge takes one
        ("bad", None),
    ],
)
def test_cron_lines_become_eventbridge_expressions(line: str, expected: str | None) -> None:
    assert aws_cron(line) == expected


def test_names_become_kubernetes_names_or_a_clear_error() -> None:
    assert dns_name("word_count") == "word-count"
    assert logical_id("word_count") == "WordCountFunction"
    with pytest.raises(ExportError, match="rename the function"):
        dns_name("café")
    with pytest.raises(ExportError, match="at most 63"):
        dns_name("x" * 64)
