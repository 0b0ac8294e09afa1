"""The version of jupyter-faas: the one place it is written (hatch reads it; a test checks package.json)."""

__version__ = "0.1.0"
