"""The registry of deployed functions: immutable versions on disk, and each name's atomic pointer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jupyter_faas.definition.limits import Limits
from jupyter_faas.definition.model import FunctionDefinition, from_cell
from jupyter_faas.errors import RegistryError
from jupyter_faas.record.registry import Registry


def define(source: str, name: str = "square") -> FunctionDefinition:
    return from_cell(source, {}, Limits.resolve(), name=name, params=["x"])


def test_deploy_get_and_list_on_disk(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    definition = define("x * x")
    registry.deploy(definition)
    deployed = registry.get("square")
    assert deployed is not None
    assert deployed.version == definition.version
    assert deployed.definition.load()(7) == 49
    assert [d.name for d in registry.deployments()] == ["square"]
    assert (tmp_path / "versions" / f"{definition.version}.pickle").is_file()
    pointer = json.loads((tmp_path / "functions" / "square.json").read_text())
    assert pointer["version"] == definition.version


def test_another_process_sees_a_redeploy_at_once_and_old_versions_stay(tmp_path: Path) -> None:
    # Two Registry objects on one folder stand for the server and a kernel.
    server, kernel = Registry(tmp_path), Registry(tmp_path)
    first, second = define("x * x"), define("x + x")
    kernel.deploy(first)
    assert server.get("square").version == first.version  # type: ignore[union-attr]
    kernel.deploy(second)
    assert server.get("square").version == second.version  # type: ignore[union-attr]
    assert server.get("square").definition.load()(7) == 14  # type: ignore[union-attr]
    assert {p.stem for p in (tmp_path / "versions").iterdir()} == {first.version, second.version}
    # A write that never finished leaves no partial file behind under the real names.
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]


def test_undeploy(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.deploy(define("x"))
    assert registry.undeploy("square") is True
    assert registry.get("square") is None
    assert registry.undeploy("square") is False
    assert registry.deployments() == []


def test_in_memory_registry(tmp_path: Path) -> None:
    registry = Registry(None)
    registry.deploy(define("x * 3"))
    assert registry.get("square").definition.load()(2) == 6  # type: ignore[union-attr]
    assert registry.undeploy("square") is True
    assert registry.get("square") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", "__init__", "class"])
def test_names_that_are_not_identifiers_are_never_paths(tmp_path: Path, name: str) -> None:
    registry = Registry(tmp_path)
    assert registry.get(name) is None


def test_a_damaged_entry_is_an_error_naming_the_file(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.deploy(define("x"))
    (tmp_path / "functions" / "square.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"square\.json is damaged"):
        Registry(tmp_path).get("square")


def test_a_missing_version_file_is_an_error_naming_it(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    definition = define("x")
    registry.deploy(definition)
    (tmp_path / "versions" / f"{definition.version}.pickle").unlink()
    with pytest.raises(RegistryError, match=f"cannot load version {definition.version[:8]} of square"):
        Registry(tmp_path).get("square")


def test_a_registry_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RegistryError, match="cannot create the function registry"):
        Registry(blocker / "registry")


def test_a_name_too_long_for_a_file_is_never_deployed_nor_found(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    long_name = "a" * 300  # an identifier, but NAME.json would be over the file system's 255 bytes
    with pytest.raises(RegistryError, match="at most 200 bytes"):
        registry.deploy(define("x * x", name=long_name))
    # Asking for it is no error of the registry's: there is no such function (it was Errno 36, with the path).
    assert registry.get(long_name) is None
    assert registry.undeploy(long_name) is False
    assert registry.get("é" * 101) is None  # 202 bytes
    registry.deploy(define("x * x", name="b" * 200))
    assert registry.get("b" * 200) is not None
