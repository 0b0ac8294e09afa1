"""The JupyterLab that the UI tests drive: Galata's test settings, and a state dir of the run's own."""

import os
import tempfile

from jupyterlab.galata import configure_jupyter_server

configure_jupyter_server(c)  # noqa: F821 - `c` is the config object Jupyter passes to this file
c.ServerApp.allow_root = True  # noqa: F821 - CI runs as root in its container
c.ServerApp.port = int(os.environ.get("FAAS_UI_PORT", "8888"))  # noqa: F821 - a free one, picked by the runner
# Deployed functions and the invocation log go to a fresh folder, never the user's.
os.environ.setdefault("DASK_FAAS__STATE_DIR", tempfile.mkdtemp(prefix="faas-ui-tests-"))
