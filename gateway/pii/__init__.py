"""PII detection: Presidio analyzers in worker processes, behind an async pool with a cache."""
