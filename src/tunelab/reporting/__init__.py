"""Self-contained HTML reports from typed sections, placed on the page in the order given:

    from tunelab.reporting import MetricsTable, Notes, Report, Summary
    Report("tunelab run: demo", [Summary({"model": "tiny"}), MetricsTable(rows), Notes(["…"])]).write(path)

A rendering layer only: it knows no metric, run or model; what a metric is called, which way is
better and how many decimals it gets come in as `Metric` data.
"""

from tunelab.reporting.format import Metric
from tunelab.reporting.page import Report, write_report
from tunelab.reporting.sections import ConfigDump, Figures, Notes, Notice, Samples, Section, Summary
from tunelab.reporting.tables import (
    Column,
    ComparisonRow,
    ComparisonTable,
    ConfusionMatrices,
    ConfusionMatrix,
    ExampleRow,
    ExamplesTable,
    MetricRow,
    MetricsTable,
    StaticTable,
    StaticTables,
)

__all__ = [
    "Column",
    "ComparisonRow",
    "ComparisonTable",
    "ConfigDump",
    "ConfusionMatrices",
    "ConfusionMatrix",
    "ExampleRow",
    "ExamplesTable",
    "Figures",
    "Metric",
    "MetricRow",
    "MetricsTable",
    "Notes",
    "Notice",
    "Report",
    "Samples",
    "Section",
    "StaticTable",
    "StaticTables",
    "Summary",
    "write_report",
]
