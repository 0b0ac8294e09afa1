"""Client against workers: a version that breaks unpickling is a clear error, a harmless one a warning."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from distributed import Client, LocalCluster

from jupyter_faas.dispatch.versions import compare, verify
from jupyter_faas.errors import VersionMismatch


@pytest.fixture(scope="module")
def real_report() -> dict[str, Any]:
    """What a real cluster reports: Client.get_versions() of an in-process worker."""
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        return client.get_versions(check=False, packages=["cloudpickle", "jupyter_faas", "dask", "distributed"])


def with_worker(report: dict[str, Any], **changes: str) -> dict[str, Any]:
    """The report, with the one worker's versions changed: python, or a package."""
    doctored = copy.deepcopy(report)
    worker = next(iter(doctored["workers"].values()))
    for name, version in changes.items():
        if name == "python":
            worker["host"]["python"] = version
        else:
            worker["packages"][name] = version
    return doctored


def test_matching_versions_pass(real_report: dict[str, Any]) -> None:
    assert compare(real_report) == ([], [])
    verify(real_report)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"python": "3.99.0.final.0"}, "python"),
        ({"cloudpickle": "99.0.0"}, "cloudpickle"),
        ({"jupyter_faas": "9.9.9"}, "jupyter_faas"),
    ],
)
def test_a_mismatch_that_breaks_unpickling_is_an_error_naming_both_versions(
    real_report: dict[str, Any], changes: dict[str, str], named: str
) -> None:
    doctored = with_worker(real_report, **changes)
    mine = real_report["client"]["host"]["python"].split()[0] if named == "python" else None
    mine = mine or real_report["client"]["packages"][named]
    with pytest.raises(VersionMismatch, match=rf"{named} {mine} here, {next(iter(changes.values()))} on worker"):
        verify(doctored)


def test_a_dask_mismatch_is_only_a_warning(real_report: dict[str, Any]) -> None:
    doctored = with_worker(real_report, distributed="1999.1.0")
    with pytest.warns(UserWarning, match="distributed .* here, 1999.1.0 on worker"):
        verify(doctored)
