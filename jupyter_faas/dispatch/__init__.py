"""The platform facade, the cluster handles, the transport to workers and cluster sharing with a server."""
