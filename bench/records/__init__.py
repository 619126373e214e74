"""The results format, owned in one place: columns (`columns`), reasons (`reasons`), writing (`write`), reading (`read`)."""

from bench.records.columns import column_table

__all__ = ["column_table"]
