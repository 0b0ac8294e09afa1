"""Function keys: secrets that reach only the functions they name, stored hashed in a 0600 file."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_faas.config import PRIVATE_FILE_MODE, open_private, private_dir
from jupyter_faas.definition.model import check_name
from jupyter_faas.errors import DefinitionError, FunctionKeyError

# Every function key starts so: a server tells it from its own token at a glance, and so can a secret scanner.
PREFIX = "fk_"
# What `functions` is for a key that may call every function, in the store and in the REST API.
ALL = "*"
KEYS_FILE = "keys.json"
# Most keys one store holds: each is a line of a file read on every change, and a caller never makes one.
MAX_KEYS = 10_000
MAX_NOTE = 200


class NewKey(str):
    """A key just made: the secret itself (`fk_...`), shown this once, with the `id` that revokes it."""

    id: str
    functions: tuple[str, ...] | None

    def __new__(cls, secret: str, key: FunctionKey) -> NewKey:
        made = super().__new__(cls, secret)
        made.id = key.id
        made.functions = key.functions
        return made


def keys_path(state_dir: Path) -> Path:
    return state_dir / KEYS_FILE


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the owner (the server's token), the public (`serve --public`), or a key.

    `functions` is None when it may call every function; `admin` when it may also use the REST API.
    """

    id: str
    functions: frozenset[str] | None
    admin: bool = False

    def may_call(self, name: str) -> bool:
        return self.functions is None or name in self.functions


OWNER = Caller("owner", None, admin=True)
PUBLIC = Caller("public", None)


@dataclass(frozen=True)
class FunctionKey:
    """A stored key, without its secret: only the secret's sha256 is kept."""

    id: str
    functions: tuple[str, ...] | None
    created: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "functions": ALL if self.functions is None else list(self.functions),
            "created": self.created,
            "note": self.note,
        }

    def caller(self) -> Caller:
        return Caller(self.id, None if self.functions is None else frozenset(self.functions))


def scope(functions: Any) -> tuple[str, ...] | None:
    """A key's functions as given (names, one name, or "*"/None for all), checked; None for all."""
    if functions is None or functions == ALL:
        return None
    if isinstance(functions, str):
        functions = [functions]
    if not isinstance(functions, list | tuple | set | frozenset) or not functions:
        raise FunctionKeyError(f'a key names the functions it may call: a list of names, or "{ALL}" for all')
    names = []
    for name in functions:
        if not isinstance(name, str):
            raise FunctionKeyError(f"a function name is a string, not {type(name).__name__}")
        try:
            names.append(check_name(name))
        except DefinitionError as e:
            raise FunctionKeyError(str(e)) from None
    return tuple(sorted(set(names)))


class KeyStore:
    """The function keys of one server, in `path` (shared by the server and its kernels), or in memory.

    Readers stat the file on every lookup and read it again when it changed, so a key revoked by another
    process (a kernel, the command line) is refused from the next request on. Writers hold a lock file.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, FunctionKey]] = {}  # id -> (sha256 of the secret, key)
        self._by_digest: dict[str, FunctionKey] = {}
        self._seen: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"<jupyter_faas function keys {self.path or 'in memory'}>"

    # -- writing -------------------------------------------------------------------------------------

    def create(self, functions: Any, note: str = "") -> tuple[FunctionKey, str]:
        """A new key for `functions` (names, or "*" for all): the key and its secret, shown this once only."""
        allowed = scope(functions)
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise FunctionKeyError(f"a key's note is a string of at most {MAX_NOTE} characters")
        secret = PREFIX + secrets.token_urlsafe(32)
        key = FunctionKey("k" + secrets.token_hex(6), allowed, time.time(), note)
        with self._writing() as keys:
            if len(keys) >= MAX_KEYS:
                raise FunctionKeyError(f"this server holds {MAX_KEYS} keys, the most it keeps; revoke some first")
            keys[key.id] = (digest(secret), key)
        return key, secret

    def revoke(self, key_id: str) -> bool:
        """Refuse the key from now on; False if no key has that id."""
        with self._writing() as keys:
            return keys.pop(key_id, None) is not None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, tuple[str, FunctionKey]]]:
        with self._lock:
            if self.path is None:
                keys = dict(self._keys)
                yield keys
                self._install(keys, None)
                return
            try:
                private_dir(self.path.parent)
                lock = open_private(self.path.with_name(self.path.name + ".lock"), os.O_RDWR)
            except OSError as e:
                raise FunctionKeyError(f"cannot write the function keys in {self.path.parent}: {e}") from None
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                keys = self._read_file()
                yield keys
                self._write_file(keys)
                self._seen = None  # read back on the next lookup, with the file's own stat
            finally:
                os.close(lock)

    def _write_file(self, keys: dict[str, tuple[str, FunctionKey]]) -> None:
        assert self.path is not None
        entries = [{**key.to_dict(), "sha256": hashed} for hashed, key in keys.values()]
        data = json.dumps({"keys": entries}, indent=1).encode()
        # mkstemp makes the file 0600 whatever the umask; a rename, so readers see the old file or the new one.
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, PRIVATE_FILE_MODE)
            os.replace(temporary, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise FunctionKeyError(f"cannot write the function keys to {self.path}: {e}") from None

    # -- reading -------------------------------------------------------------------------------------

    def _read_file(self) -> dict[str, tuple[str, FunctionKey]]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise FunctionKeyError(f"the function keys in {self.path} cannot be read: {e}") from None
        keys: dict[str, tuple[str, FunctionKey]] = {}
        try:
            for entry in data["keys"]:
                functions = entry["functions"]
                key = FunctionKey(
                    str(entry["id"]),
                    None if functions == ALL else tuple(str(name) for name in functions),
                    float(entry["created"]),
                    str(entry.get("note", "")),
                )
                keys[key.id] = (str(entry["sha256"]), key)
        except (KeyError, TypeError, ValueError) as e:
            raise FunctionKeyError(f"the function keys in {self.path} are damaged: {e!r}") from None
        return keys

    def _install(self, keys: dict[str, tuple[str, FunctionKey]], seen: tuple[int, int, int] | None) -> None:
        self._keys = keys
        self._by_digest = {hashed: key for hashed, key in keys.values()}
        self._seen = seen

    def _current(self) -> dict[str, FunctionKey]:
        """The keys by the sha256 of their secret, read again if the file changed since last time."""
        if self.path is None:
            return self._by_digest
        try:
            stat = self.path.stat()
            seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = (0, 0, 0)
        except OSError as e:
            raise FunctionKeyError(f"the function keys in {self.path} cannot be read: {e}") from None
        with self._lock:
            if seen != self._seen:
                self._install(self._read_file() if seen != (0, 0, 0) else {}, seen)
            return self._by_digest

    def find(self, secret: str) -> FunctionKey | None:
        """The key with this secret, or None (never one revoked, also by another process)."""
        if not secret.startswith(PREFIX):
            return None
        return self._current().get(digest(secret))

    def listed(self) -> list[FunctionKey]:
        """Every key, oldest first, without secrets."""
        return sorted(self._current().values(), key=lambda key: (key.created, key.id))

    def get(self, key_id: str) -> FunctionKey | None:
        return next((key for key in self._current().values() if key.id == key_id), None)


def bearer(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` (or `token TOKEN`) header, or None."""
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not given.strip():
        return None
    return given.strip()


def caller_of(store: KeyStore, token: str) -> Caller | None:
    """The caller a function key speaks for, or None for a token that is no live key."""
    key = store.find(token)
    return None if key is None else key.caller()


def described(keys: Iterable[FunctionKey]) -> list[dict[str, Any]]:
    return [key.to_dict() for key in keys]
