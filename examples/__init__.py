"""Runnable example apps: ``python -m trio_background examples.NAME:app``."""
