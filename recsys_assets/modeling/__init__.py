"""Models, evaluation, tuning and the item index: numpy/scipy/implicit/faiss, no Dagster."""
