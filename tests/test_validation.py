"""great-expectations suites: real validation runs, pass on clean data, name what fails."""

from __future__ import annotations

import polars as pl

from recsys_assets.validation.suites import (
    exact_failures,
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


def _bad_ratings() -> pl.DataFrame:
    rows = {
        "user_id": [3, 3, 1, 4, None],
        "movie_id": [99, 10, 10, 11, 11],
        "rating": [7.0, 3.25, 4.0, None, 2.0],
        "timestamp": [1, 964982703, 964982703, 1600000000, 1600000001],
    }
    return pl.concat([GOOD, pl.DataFrame(rows, schema=GOOD.schema)])


def _summary(failures) -> dict:
    return {
        (f.expectation, f.column): (f.unexpected_count, sorted(f.sample_values, key=str)) for f in failures
    }


def test_exact_polars_checks_agree_with_great_expectations() -> None:
    """The whole-frame polars path counts and samples what GX finds, expectation by expectation."""
    bad = _bad_ratings()
    for frame, expectations in [
        (bad, ratings_expectations([10, 11])),
        (GOOD, ratings_expectations([10, 11])),
        (bad.drop("timestamp"), ratings_expectations([10, 11])),
        (
            bad.with_columns(weight=pl.Series([1.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0, -1.0])).select(
                "user_id", "movie_id", "rating", "weight", "timestamp"
            ),
            interactions_expectations([10, 11], 4.0),
        ),
    ]:
        by_gx = validate(frame, "suite", expectations)
        exact = exact_failures(frame, expectations)
        assert _summary(exact).keys() == _summary(by_gx.failures).keys()
        # GX shows a null as nan, polars as None: compare the counts there, values elsewhere
        nulls = "expect_column_values_to_not_be_null"
        expected = {k: v if k[0] != nulls else v[0] for k, v in _summary(by_gx.failures).items()}
        found = {k: v if k[0] != nulls else v[0] for k, v in _summary(exact).items()}
        assert found == expected


def test_large_frames_stay_exact_for_a_single_bad_row() -> None:
    """Above ``gx_rows`` GX sees a sample; one bad row outside it still fails the report."""
    n = 20_000
    frame = pl.DataFrame(
        {
            "user_id": range(1, n + 1),
            "movie_id": [10] * n,
            "rating": [4.0] * n,
            "timestamp": [964982703] * n,
        },
        schema=GOOD.schema,
    )
    frame = frame.with_columns(
        pl.when(pl.col("user_id") == n).then(12).otherwise(pl.col("movie_id")).alias("movie_id")
    )
    sampled = frame.sample(n=100, seed=0)
    assert 12 not in sampled["movie_id"].to_list()  # the bad row is not in GX's sample
    report = validate(frame, "raw_ratings", ratings_expectations([10, 11]), gx_rows=100)
    failed = _failed(report)
    assert not report.success and report.gx_rows == 100 and report.rows == n
    movie = failed[("expect_column_values_to_be_in_set", "movie_id")]
    assert movie.unexpected_count == 1 and movie.sample_rows[0]["user_id"] == n
    assert "all 20,000 rows" in report.markdown()
    assert validate(
        frame.filter(pl.col("user_id") < n), "raw_ratings", ratings_expectations([10, 11]), gx_rows=100
    ).success
