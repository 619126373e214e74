"""The results format in one place: its columns, reasons, writing and typed reading."""

from bench.records.columns import column_table

__all__ = ["column_table"]
