"""furoshiki runtime: what runs inside the packed executable (and from source)."""

__version__ = "0.1.0"
