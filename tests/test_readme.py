"""README.md's technique table is the registry's own (`accelbench list --markdown`)."""

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
