"""A tamper-evident audit log following Certificate Transparency (RFC 9162)."""

__version__ = "0.1.0"
