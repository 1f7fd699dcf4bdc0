"""MovieLens recommender: the Dagster code location lives in ``recsys_assets.definitions``.

Nothing here imports dagster, so the pure modules (settings, sources, processing) can be used
by the serving package and by scripts without pulling in the orchestrator.
"""
