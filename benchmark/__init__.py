"""Throughput benchmark: Keras' image loaders against this project's pipeline.

By job: `timing` (how a row is measured), `loaders` (what the pipeline is
compared with), `plan` (which rows run, in which order, into typed results),
`targets` (the issue's targets, as data) and `report` (the table, the
verdicts, results.json and the chart). It reports; it never asserts.
"""

from pipeline import cli


class BenchmarkError(cli.UserError, ValueError):
    """The benchmark cannot run as asked; the message says why."""
