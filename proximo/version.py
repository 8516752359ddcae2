"""proximo's version, in one place: the package face, the files a run writes and pyproject.toml read it here."""
__version__ = "0.1.0"
