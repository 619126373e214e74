"""Generated tables stay in step: README.md's technique table (the registry), docs/columns.md's (bench.records)."""

from __future__ import annotations

import re
from pathlib import Path

from bench.cli import technique_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_technique_table_matches_the_registry():
    text = README.read_text()
    m = re.search(r"<!-- technique table:[^\n]*-->\n(.*?)<!-- end of technique table -->", text, re.S)
    assert m, "README.md lost its technique table markers"
    assert m.group(1) == technique_table(), ("README.md's technique table differs from the registry: "
                                              "paste the output of `accelbench list --markdown` between the markers")


COLUMNS_DOC = README.parent / "docs" / "columns.md"


def test_the_column_reference_matches_the_declared_columns():
    from bench.records import column_table

    text = COLUMNS_DOC.read_text()
    m = re.search(r"<!-- column table:[^\n]*-->\n(.*?)<!-- end of column table -->", text, re.S)
    assert m, "docs/columns.md lost its column table markers"
    assert m.group(1) == column_table(), ("docs/columns.md's column table differs from bench.records.columns: paste "
                                          "the output of bench.records.column_table() between the markers")
