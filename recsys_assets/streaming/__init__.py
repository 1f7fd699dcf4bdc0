"""New ratings arriving over time: the stream simulator and drift measures (no Dagster here)."""
