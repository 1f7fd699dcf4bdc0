"""Metadata shared by every asset: row counts, a preview, the schema, and the data source."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
import polars as pl

RAW_RATINGS = dg.AssetKey("raw_ratings")


def markdown_table(frame: pl.DataFrame, max_rows: int = 10) -> str:
    shown = frame.head(max_rows)
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "---|" * len(shown.columns)

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        return str(value).replace("|", "\\|")

    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.iter_rows()]
    return "\n".join([header, rule, *rows])


def frame_metadata(frame: pl.DataFrame, source: str, preview_rows: int = 10) -> dict:
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()]
    )
    return {
        "dagster/row_count": len(frame),
        "dagster/column_schema": schema,
        "preview": dg.MetadataValue.md(markdown_table(frame, preview_rows)),
        "data_source": source,
    }


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> Mapping[str, dg.MetadataValue]:
    """The metadata of an asset's latest materialisation ({} before the first)."""
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event else None
    return materialization.metadata if materialization else {}


def upstream_source(context: dg.AssetExecutionContext) -> str:
    """The data source recorded by the latest ``raw_ratings`` materialisation."""
    entry = latest_metadata(context.instance, RAW_RATINGS).get("data_source")
    return str(entry.value) if entry is not None else "unknown (raw_ratings has no materialisation)"
