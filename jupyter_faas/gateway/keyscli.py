"""`jupyter faas keys create|list|revoke`: the function keys of this user's Jupyter server, or of one `serve`."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from jupyter_core.application import JupyterApp
from traitlets import Bool, Unicode

from jupyter_faas import config as _config
from jupyter_faas.errors import FaasError
from jupyter_faas.gateway.keys import ALL, KeyStore, keys_path
from jupyter_faas.gateway.serve import serve_state

USAGE = (
    "jupyter faas keys create NAME [NAME ...] | keys create --all | keys list | keys revoke ID\n"
    "  --notebook NB.ipynb: the keys of `jupyter faas serve NB.ipynb` instead of the Jupyter server's"
)


class KeysApp(JupyterApp):
    """Make, list and revoke function keys: each calls only the functions it names, and nothing else."""

    name = "jupyter-faas-keys"
    description = "Function keys: create NAME... (the secret is shown once), list, revoke ID."
    examples = "jupyter faas keys create square\njupyter faas keys list\njupyter faas keys revoke k0123456789ab"

    notebook = Unicode("", config=True, help="The keys of `jupyter faas serve` of this notebook.")
    all_functions = Bool(False, config=True, help="create: a key for every function, present and future.")
    note = Unicode("", config=True, help="create: a note kept with the key, e.g. who holds it.")

    aliases = {"notebook": "KeysApp.notebook", "note": "KeysApp.note"}
    flags = {"all": ({"KeysApp": {"all_functions": True}}, "create: a key for every function.")}

    def store(self) -> KeyStore:
        if self.notebook:
            return KeyStore(keys_path(serve_state(Path(self.notebook).resolve())))
        return KeyStore(keys_path(_config.state_dir()))

    def start(self) -> None:
        action, *rest = self.extra_args or ["help"]
        try:
            if action == "create" and (rest or self.all_functions) and not (rest and self.all_functions):
                key, secret = self.store().create(ALL if self.all_functions else rest, self.note)
                reach = "every function" if key.functions is None else ", ".join(key.functions)
                print(f"{secret}\n  id {key.id}, calls {reach}. Shown this once only: the server keeps its sha256.")
            elif action == "list" and not rest:
                for key in self.store().listed():
                    created = datetime.datetime.fromtimestamp(key.created).isoformat(timespec="seconds")
                    reach = ALL if key.functions is None else ",".join(key.functions)
                    print(f"{key.id}  {reach}  created {created}  {key.note}".rstrip())
            elif action == "revoke" and len(rest) == 1:
                if not self.store().revoke(rest[0]):
                    self._fail(f"no function key {rest[0]!r}", 1)
                print(f"revoked {rest[0]}")
            else:
                self._fail(f"usage: {USAGE}", 2)
        except FaasError as e:
            self._fail(str(e), 1)

    def _fail(self, message: str, code: int) -> None:
        print(f"jupyter faas keys: {message}", file=sys.stderr, flush=True)
        self.exit(code)
