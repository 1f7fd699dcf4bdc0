"""great-expectations suites: real validation runs, pass on clean data, name what fails."""

from __future__ import annotations

import polars as pl

from recsys_assets.validation.suites import (
    interactions_expectations,
    ratings_expectations,
    validate,
)

GOOD = pl.DataFrame(
    {
        "user_id": [1, 1, 2],
        "movie_id": [10, 11, 10],
        "rating": [4.0, 0.5, 5.0],
        "timestamp": [964982703, 964982704, 1500000000],
    },
    schema={"user_id": pl.Int32, "movie_id": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64},
)


def _failed(report) -> dict[tuple[str, str | None], object]:
    return {(f.expectation, f.column): f for f in report.failures}


def test_clean_ratings_pass() -> None:
    report = validate(GOOD, "raw_ratings", ratings_expectations([10, 11]))
    assert report.success and report.evaluated >= 10 and report.rows == 3


def test_bad_ratings_name_expectation_column_and_rows() -> None:
    bad = pl.concat(
        [
            GOOD,
            pl.DataFrame(
                {
                    "user_id": [3, 3, 1],
                    "movie_id": [99, 10, 10],
                    "rating": [7.0, 3.25, 4.0],
                    "timestamp": [1, 964982703, 964982703],
                },
                schema=GOOD.schema,
            ),
        ]
    )
    report = validate(bad, "raw_ratings", ratings_expectations([10, 11]))
    failed = _failed(report)
    assert not report.success
    assert failed[("expect_column_values_to_be_in_set", "movie_id")].sample_values == [99]
    assert failed[("expect_column_values_to_be_between", "rating")].sample_values == [7.0]
    assert sorted(failed[("expect_column_values_to_be_in_set", "rating")].sample_values) == [
        3.25,
        7.0,
    ]
    assert failed[("expect_column_values_to_be_between", "timestamp")].unexpected_count == 1
    assert ("expect_compound_columns_to_be_unique", "user_id, movie_id, timestamp") in failed
    bad_row = failed[("expect_column_values_to_be_in_set", "movie_id")].sample_rows[0]
    assert bad_row == {"user_id": 3, "movie_id": 99, "rating": 7.0, "timestamp": 1}
    markdown = report.markdown()
    assert "movie_id" in markdown and "| 3 | 99 | 7.0 | 1 |" in markdown


def test_missing_column_fails_schema_expectation() -> None:
    report = validate(GOOD.drop("timestamp"), "raw_ratings", ratings_expectations([10, 11]))
    assert ("expect_table_columns_to_match_set", None) in _failed(report)


def test_interactions_suite_checks_threshold_and_uniqueness() -> None:
    interactions = GOOD.with_columns(weight=pl.lit(1.0, pl.Float32)).select(
        "user_id", "movie_id", "rating", "weight", "timestamp"
    )
    duplicated = pl.concat([interactions, interactions.head(1)])
    failed = _failed(validate(duplicated, "interactions", interactions_expectations([10, 11], 4.0)))
    assert ("expect_compound_columns_to_be_unique", "user_id, movie_id") in failed
    assert failed[("expect_column_values_to_be_between", "rating")].sample_values == [0.5]
