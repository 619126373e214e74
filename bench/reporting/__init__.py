"""Reporting: loading results, verdicts, charts, the Markdown/HTML report and the regression gate."""
