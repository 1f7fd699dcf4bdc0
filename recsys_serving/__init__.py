"""HTTP serving of the promoted recommendation bundle (FastAPI).

A separate package that never imports dagster: it reads the same ``RECSYS_*`` settings and the
bundle format, nothing of the orchestrator. The API itself arrives with the production bundle.
"""
