"""Figures, text, HTML, widget views and progress."""
