-- The postgres image creates $POSTGRES_DB (Dagster's); MLflow gets its own database.
CREATE DATABASE mlflow;
