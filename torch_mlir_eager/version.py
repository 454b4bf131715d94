"""The package version: one place, read by pyproject.toml and by the disk cache's environment id."""
__version__ = "0.1.0"
