"""great-expectations (1.x) suites for ratings and interactions, and a runner that reports failures.

Kept free of Dagster: the asset checks call :func:`validate` and turn the report into metadata.
dagster-ge only supports GX < 1.0, so GX is driven directly with an ephemeral context.

GX's pandas engine costs about a minute per suite on 25M rows. Above ``GX_ROWS`` rows the suite runs
on a deterministic sample and every expectation is also checked exactly on the whole frame with
polars (:func:`exact_failures`), so the check stays blocking for a single bad row.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import great_expectations as gx
import great_expectations.expectations as gxe
import polars as pl
from great_expectations.data_context.types.base import ProgressBarsConfig

HALF_STARS = [x / 2 for x in range(1, 11)]
# MovieLens starts in January 1995; anything earlier is a corrupt timestamp.
EARLIEST_TIMESTAMP = int(datetime(1995, 1, 1, tzinfo=UTC).timestamp())
SAMPLE_ROWS = 5
GX_ROWS = 500_000


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str
    column: str | None
    unexpected_count: int | None
    unexpected_percent: float | None
    sample_values: list
    sample_rows: list[dict]
    observed: object = None


@dataclass(frozen=True)
class ValidationReport:
    suite: str
    rows: int
    evaluated: int
    failures: list[FailedExpectation] = field(default_factory=list)
    gx_rows: int | None = None  # rows great-expectations saw; None: all of them

    @property
    def success(self) -> bool:
        return not self.failures

    def markdown(self) -> str:
        status = "passed" if self.success else f"**{len(self.failures)} failed**"
        lines = [
            f"### Suite `{self.suite}`: {status}",
            f"{self.evaluated} expectations on {self.rows:,} rows."
            if self.gx_rows is None
            else f"{self.evaluated} expectations checked exactly on all {self.rows:,} rows (polars); "
            f"great-expectations ran on a seeded sample of {self.gx_rows:,} rows.",
        ]
        if not self.failures:
            return "\n\n".join(lines)
        table = [
            "| expectation | column | unexpected | sample values / observed |",
            "|---|---|---|---|",
        ]
        for f in self.failures:
            count = (
                "" if f.unexpected_count is None else f"{f.unexpected_count:,} ({f.unexpected_percent:.3g}%)"
            )
            sample = f.sample_values if f.sample_values else f.observed
            table.append(f"| `{f.expectation}` | {f.column or ''} | {count} | {sample} |")
        lines.append("\n".join(table))
        for f in self.failures:
            if f.sample_rows:
                header = list(f.sample_rows[0])
                rows = [
                    "| " + " | ".join(header) + " |",
                    "|" + "---|" * len(header),
                    *("| " + " | ".join(str(r[h]) for h in header) + " |" for r in f.sample_rows),
                ]
                lines.append(f"Sample bad rows for `{f.expectation}` on `{f.column}`:\n\n" + "\n".join(rows))
        return "\n\n".join(lines)


def ratings_expectations(
    known_movie_ids: Sequence[int], latest_timestamp: int | None = None, min_rows: int = 1
) -> list[gxe.Expectation]:
    """Schema, nulls, rating range and half-star step, known movies, timestamp range, uniqueness.

    ``min_rows=0`` for stream batches: a week without ratings is a quiet week, not bad data."""
    latest = latest_timestamp or int(datetime.now(UTC).timestamp()) + 86_400
    columns = ["user_id", "movie_id", "rating", "timestamp"]
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns),
        gxe.ExpectColumnValuesToBeBetween(column="user_id", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=0.5, max_value=5.0),
        gxe.ExpectColumnValuesToBeInSet(column="rating", value_set=HALF_STARS),
        gxe.ExpectColumnValuesToBeInSet(column="movie_id", value_set=list(known_movie_ids)),
        gxe.ExpectColumnValuesToBeBetween(column="timestamp", min_value=EARLIEST_TIMESTAMP, max_value=latest),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "movie_id", "timestamp"]),
    ]


def interactions_expectations(
    known_movie_ids: Sequence[int], positive_threshold: float
) -> list[gxe.Expectation]:
    columns = ["user_id", "movie_id", "rating", "weight", "timestamp"]
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns),
        gxe.ExpectColumnValuesToBeBetween(column="rating", min_value=positive_threshold, max_value=5.0),
        gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToBeInSet(column="movie_id", value_set=list(known_movie_ids)),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "movie_id"]),
    ]


@functools.cache
def _context() -> gx.data_context.AbstractDataContext:
    # GX logs every metric batch and draws tqdm bars; neither belongs in a pipeline's run log.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def validate(
    frame: pl.DataFrame, suite_name: str, expectations: list[gxe.Expectation], gx_rows: int = GX_ROWS
) -> ValidationReport:
    """Run ``expectations`` on ``frame`` and collect each failure with sample offending rows.

    Frames longer than ``gx_rows`` are checked exactly with polars and by GX on a seeded sample;
    a failure either way fails the report (polars' whole-frame counts win where both fail)."""
    if len(frame) <= gx_rows:
        return ValidationReport(
            suite_name, len(frame), len(expectations), _gx_failures(frame, suite_name, expectations)
        )
    exact = exact_failures(frame, expectations)
    sampled = _gx_failures(frame.sample(n=gx_rows, seed=0), suite_name, expectations)
    seen = {(f.expectation, f.column) for f in exact}
    failures = exact + [f for f in sampled if (f.expectation, f.column) not in seen]
    return ValidationReport(suite_name, len(frame), len(expectations), failures, gx_rows=gx_rows)


def _gx_failures(
    frame: pl.DataFrame, suite_name: str, expectations: list[gxe.Expectation]
) -> list[FailedExpectation]:
    context = _context()
    run_name = f"{suite_name}-{uuid.uuid4().hex[:8]}"
    batch = (
        context.data_sources.add_pandas(run_name)
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=run_name, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=run_name, data=batch, suite=suite)
    )
    try:
        result = definition.run(
            batch_parameters={"dataframe": frame.to_pandas()},
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS},
        )
    finally:
        context.validation_definitions.delete(run_name)
        context.suites.delete(run_name)
        context.data_sources.delete(run_name)
    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        details = outcome.result or {}
        config = outcome.expectation_config
        assert config is not None  # GX attaches its configuration to every expectation's result
        kwargs = config.kwargs
        column = kwargs.get("column") or ", ".join(kwargs.get("column_list", []) or [])
        indices = [i for i in details.get("partial_unexpected_index_list") or [] if isinstance(i, int)][
            :SAMPLE_ROWS
        ]
        rows = frame[indices].to_dicts() if indices else []
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            observed = outcome.exception_info.get("exception_message")
        else:
            observed = details.get("observed_value")
        failures.append(
            FailedExpectation(
                expectation=config.type,
                column=column or None,
                unexpected_count=details.get("unexpected_count"),
                unexpected_percent=details.get("unexpected_percent"),
                sample_values=list(details.get("partial_unexpected_list") or [])[:SAMPLE_ROWS],
                sample_rows=rows,
                observed=observed,
            )
        )
    return failures


def exact_failures(frame: pl.DataFrame, expectations: list[gxe.Expectation]) -> list[FailedExpectation]:
    """The expectations used here, evaluated with GX's semantics on every row of ``frame`` in polars
    (nulls count only against the not-null expectation; duplicates mark every row of the group)."""
    failures = []
    for expectation in expectations:
        kind = expectation.expectation_type
        if isinstance(expectation, gxe.ExpectTableColumnsToMatchSet):
            wanted, present = set(expectation.column_set or []), set(frame.columns)
            if present != wanted if expectation.exact_match else not wanted <= present:
                failures.append(FailedExpectation(kind, None, None, None, [], [], sorted(present)))
            continue
        if isinstance(expectation, gxe.ExpectTableRowCountToBeBetween):
            low, high = _bound(expectation.min_value), _bound(expectation.max_value)
            if (low is not None and len(frame) < low) or (high is not None and len(frame) > high):
                failures.append(FailedExpectation(kind, None, None, None, [], [], len(frame)))
            continue
        if isinstance(expectation, gxe.ExpectCompoundColumnsToBeUnique):
            columns = list(expectation.column_list)
            label = ", ".join(columns)
        elif isinstance(
            expectation,
            gxe.ExpectColumnValuesToNotBeNull
            | gxe.ExpectColumnValuesToBeBetween
            | gxe.ExpectColumnValuesToBeInSet,
        ):
            columns = [expectation.column]
            label = expectation.column
        else:
            raise TypeError(f"no exact polars check for {kind}; keep the frame under gx_rows or add one")
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            failures.append(
                FailedExpectation(kind, label, None, None, [], [], f"missing column(s) {missing}")
            )
            continue
        unexpected, considered = _unexpected(expectation, columns)
        counted = frame.select(unexpected.sum().alias("bad"), considered.sum().alias("all")).row(0)
        if counted[0] == 0:
            continue
        rows = frame.filter(unexpected).head(SAMPLE_ROWS)
        failures.append(
            FailedExpectation(
                expectation=kind,
                column=label,
                unexpected_count=counted[0],
                unexpected_percent=100 * counted[0] / max(counted[1], 1),
                sample_values=rows[columns[0]].to_list()
                if len(columns) == 1
                else rows.select(columns).to_dicts(),
                sample_rows=rows.to_dicts(),
            )
        )
    return failures


def _unexpected(expectation: gxe.Expectation, columns: list[str]) -> tuple[pl.Expr, pl.Expr]:
    """(rows that break the expectation, rows it applies to) as polars expressions."""
    if isinstance(expectation, gxe.ExpectCompoundColumnsToBeUnique):
        return pl.struct(columns).is_duplicated(), pl.lit(True)
    value = pl.col(columns[0])
    if isinstance(expectation, gxe.ExpectColumnValuesToNotBeNull):
        return value.is_null(), pl.lit(True)
    if isinstance(expectation, gxe.ExpectColumnValuesToBeInSet):
        allowed = pl.Series(list(expectation.value_set)).cast(
            pl.Float64 if any(isinstance(v, float) for v in expectation.value_set) else pl.Int64
        )
        return value.is_not_null() & ~value.cast(allowed.dtype).is_in(allowed.implode()), value.is_not_null()
    assert isinstance(expectation, gxe.ExpectColumnValuesToBeBetween)
    inside = pl.lit(True)
    if (low := _bound(expectation.min_value)) is not None:
        inside &= value > low if expectation.strict_min else value >= low
    if (high := _bound(expectation.max_value)) is not None:
        inside &= value < high if expectation.strict_max else value <= high
    return value.is_not_null() & ~inside, value.is_not_null()


def _bound(value: object) -> float | None:
    """A literal GX bound; suite parameters (``{"$PARAMETER": …}``) have no exact polars check."""
    if value is None or isinstance(value, int | float):
        return value
    raise TypeError(f"no exact polars check for the bound {value!r}; use a literal number")
