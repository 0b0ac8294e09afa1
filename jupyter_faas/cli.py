"""`jupyter faas`: the command-line entry point, with its subcommands."""

from __future__ import annotations

from jupyter_core.application import JupyterApp

from jupyter_faas.export.app import ExportApp
from jupyter_faas.gateway.keyscli import KeysApp
from jupyter_faas.gateway.serve import ServeApp


class FaasApp(JupyterApp):
    """jupyter-faas from the command line."""

    name = "jupyter-faas"
    description = "Serverless functions native to Jupyter. Subcommands: serve, keys, export."
    subcommands = {
        "serve": (ServeApp, ServeApp.description.splitlines()[0]),
        "keys": (KeysApp, KeysApp.description),
        "export": (ExportApp, ExportApp.description.splitlines()[0]),
    }

    def start(self) -> None:
        if self.subapp is None:
            print("jupyter faas: give a subcommand, e.g. jupyter faas serve notebook.ipynb", flush=True)
            self.print_subcommands()
            self.exit(2)
        super().start()


main = FaasApp.launch_instance

if __name__ == "__main__":
    main()
