"""Deployed functions: immutable versions named by content hash, and each name's pointer to one of them."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle

from jupyter_faas.config import private_dir
from jupyter_faas.definition.model import FunctionDefinition, check_name
from jupyter_faas.errors import DefinitionError, RegistryError

# A deployed name is a file name (NAME.json, and .NAME.json.XXXXXXXX while it is written): at most this many
# bytes, well within every file system's 255. A longer name is never deployed; asking for one finds nothing.
MAX_NAME_BYTES = 200


@dataclass(frozen=True)
class Deployment:
    """One name, pointing at one immutable version of a function."""

    name: str
    definition: FunctionDefinition
    deployed_at: float
    # Its HTTP abuse controls as written ("50/s", "10000/day"): the gateway reads them; None for none.
    rate: str | None = None
    quota: str | None = None

    @property
    def version(self) -> str:
        return self.definition.version


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a part of either; mode 0600 (mkstemp's, whatever the umask)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class Registry:
    """Deployed functions, on disk under `directory` (shared by a server and its kernels), or in memory.

    Layout: `versions/<hash>.pickle` holds a definition and is never changed once written;
    `functions/<name>.json` names the version that answers for `name`. Deploying writes the version,
    then replaces the pointer in one rename, so a request sees the old version or the new one.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        # In memory: the deployments themselves; on disk: a cache of what the pointer files said.
        self._memory: dict[str, Deployment] = {}
        self._seen: dict[str, tuple[int, Deployment]] = {}
        self._versions: dict[str, FunctionDefinition] = {}
        if directory is not None:
            try:
                private_dir(directory / "versions")
                private_dir(directory / "functions")
            except OSError as e:
                raise RegistryError(f"cannot create the function registry in {directory}: {e}") from None

    def __repr__(self) -> str:
        return f"<jupyter_faas registry {self.directory or 'in memory'}>"

    def deploy(self, definition: FunctionDefinition, rate: str | None = None, quota: str | None = None) -> Deployment:
        """Make `definition` answer for its name from now on; requests already running keep their version.

        `rate` and `quota` are the endpoint's limits per caller, checked by the gateway (`gateway/ratelimit.py`).
        """
        deployment = Deployment(definition.name, definition, time.time(), rate, quota)
        if self.directory is None:
            with self._lock:
                self._memory[definition.name] = deployment
            return deployment
        version_path = self.directory / "versions" / f"{definition.version}.pickle"
        pointer: dict[str, object] = {
            "name": definition.name, "version": definition.version, "deployed_at": deployment.deployed_at
        }  # fmt: skip
        pointer.update({key: value for key, value in (("rate", rate), ("quota", quota)) if value is not None})
        if len(definition.name.encode()) > MAX_NAME_BYTES:
            raise RegistryError(
                f"cannot deploy {definition.name[:40]}...: a deployed function's name is at most {MAX_NAME_BYTES} "
                "bytes long"
            )
        try:
            if not version_path.exists():
                _write_atomically(version_path, cloudpickle.dumps(definition, protocol=5))
            _write_atomically(self._pointer(definition.name), json.dumps(pointer).encode())
        except OSError as e:
            raise RegistryError(f"cannot write {definition.name} to the registry in {self.directory}: {e}") from None
        return deployment

    def undeploy(self, name: str) -> bool:
        """Stop answering for `name`; False if it was not deployed. Its versions stay, as history."""
        if self.directory is None:
            with self._lock:
                return self._memory.pop(name, None) is not None
        try:
            self._pointer(name).unlink()
        except (FileNotFoundError, NotADirectoryError, DefinitionError):
            return False  # a name that cannot be a function's was never deployed
        except OSError as e:
            raise RegistryError(f"cannot undeploy {name!r} from {self.directory}: {e}") from None
        return True

    def get(self, name: str) -> Deployment | None:
        """The deployment answering for `name` now, or None."""
        if self.directory is None:
            return self._memory.get(name)
        try:
            pointer = self._pointer(name)
        except DefinitionError:
            return None
        try:
            # A stat per request: the pointer may have been replaced by another process (a kernel).
            changed = pointer.stat().st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise RegistryError(f"cannot read {pointer}: {e}") from None
        seen = self._seen.get(name)
        if seen is not None and seen[0] == changed:
            return seen[1]
        deployment = self._read(name, pointer)
        if deployment is not None:
            self._seen[name] = (changed, deployment)
        return deployment

    def deployments(self) -> list[Deployment]:
        """Every deployed function, by name."""
        if self.directory is None:
            with self._lock:
                return sorted(self._memory.values(), key=lambda d: d.name)
        found = []
        for pointer in sorted((self.directory / "functions").glob("*.json")):
            deployment = self.get(pointer.stem)
            if deployment is not None:
                found.append(deployment)
        return found

    def _pointer(self, name: str) -> Path:
        """Where `name`'s pointer is; DefinitionError for a name no deployed function can have."""
        assert self.directory is not None
        # check_name keeps every name a plain identifier, and the length check a short one: a safe file name.
        checked = check_name(name)
        if len(checked.encode()) > MAX_NAME_BYTES:
            raise DefinitionError(f"a deployed function's name is at most {MAX_NAME_BYTES} bytes long")
        return self.directory / "functions" / f"{checked}.json"

    def _read(self, name: str, pointer: Path) -> Deployment | None:
        try:
            data = json.loads(pointer.read_text())
            version = str(data["version"])
            deployed_at = float(data["deployed_at"])
            rate, quota = data.get("rate"), data.get("quota")
            if not isinstance(rate, str | None) or not isinstance(quota, str | None):
                raise ValueError("rate and quota are text like 50/s and 10000/day")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"the registry entry {pointer} is damaged: {e}") from None
        definition = self._versions.get(version)
        if definition is None:
            path = self.directory / "versions" / f"{version}.pickle"  # type: ignore[operator]
            try:
                # Written by this user's own kernels into this user's state dir: never bytes from a request.
                definition = cloudpickle.loads(path.read_bytes())
            except Exception as e:
                raise RegistryError(f"cannot load version {version[:8]} of {name} from {path}: {e}") from None
            if not isinstance(definition, FunctionDefinition) or definition.version != version:
                raise RegistryError(f"{path} does not hold version {version[:8]} of {name}")
            self._versions[version] = definition
        return Deployment(name, definition, deployed_at, rate, quota)
