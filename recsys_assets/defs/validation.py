"""Turn a great-expectations report into a Dagster check result."""

from __future__ import annotations

import dagster as dg

from ..validation.suites import ValidationReport


def report_result(report: ValidationReport, check_name: str | None = None) -> dg.AssetCheckResult:
    failed = sorted({f"{f.expectation}({f.column})" if f.column else f.expectation for f in report.failures})
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=report.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if report.success else "failed: " + ", ".join(failed),
        metadata={
            "report": dg.MetadataValue.md(report.markdown()),
            "expectations": report.evaluated,
            "failed_expectations": len(report.failures),
            "rows_validated": report.rows,
            # above GX_ROWS, GX sees a seeded sample and polars checks every row exactly
            "rows_great_expectations": report.rows if report.gx_rows is None else report.gx_rows,
            "rows_checked_exactly": report.rows,
        },
    )
