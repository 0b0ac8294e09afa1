"""What runs on a Dask worker: the plugin, the sandbox, output capture and the wire format."""
