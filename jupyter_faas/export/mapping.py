"""Turning jupyter-faas settings into the targets' own forms: names, memory sizes, schedules."""

from __future__ import annotations

import math
import re

from jupyter_faas.errors import ExportError

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def dns_name(name: str) -> str:
    """A function name as Kubernetes and OpenFaaS name things: lowercase letters, digits and '-'."""
    label = name.lower().replace("_", "-").strip("-")
    if len(label) > 63 or not _DNS_LABEL.fullmatch(label):
        raise ExportError(
            f"{name!r} cannot be a Kubernetes or OpenFaaS name (lowercase letters, digits and '-', starting with a "
            "letter, at most 63): rename the function to export it"
        )
    return label


def logical_id(name: str) -> str:
    """A function name as a CloudFormation logical id: letters and digits only."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name) if part) + "Function"


def mebibytes(size: int) -> int:
    return max(1, math.ceil(size / 2**20))


def kubernetes_memory(size: int) -> str:
    return f"{mebibytes(size)}Mi"


def whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def cron_for_every(seconds: float) -> str | None:
    """A five-field cron line firing every `seconds`, when cron can: whole minutes or hours that divide evenly."""
    if seconds % 60:
        return None
    minutes = int(seconds // 60)
    if minutes < 60 and 60 % minutes == 0:
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    if minutes % 60 == 0:
        hours = minutes // 60
        if hours < 24 and 24 % hours == 0:
            return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
        if hours == 24:
            return "0 0 * * *"
    return None


def aws_rate(seconds: float) -> str | None:
    """An EventBridge rate() expression: whole minutes at the least."""
    if seconds % 60:
        return None
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = int(seconds // size)
            return f"rate({count} {unit}{'' if count == 1 else 's'})"
    return None


def _aws_weekday(field: str) -> str:
    # cron counts Sunday as 0 (or 7); EventBridge as 1.
    return re.sub(r"\d+", lambda m: str(int(m.group()) % 7 + 1), field)


def aws_cron(line: str) -> str | None:
    """An EventBridge cron() expression from a five-field cron line; None when EventBridge cannot say it
    (it takes a day of the month or a day of the week, not both)."""
    fields = line.split()
    if len(fields) != 5:
        return None
    minute, hour, day, month, weekday = fields
    if weekday == "*":
        weekday = "?"
    elif day == "*":
        day = "?"
        if "/" in weekday:
            return None
        weekday = _aws_weekday(weekday)
    else:
        return None
    return f"cron({minute} {hour} {day} {month} {weekday} *)"
