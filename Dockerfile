# One image for every service: the Dagster code servers, webserver and daemon, the MLflow server,
# the API and the stream simulator (each a different command in docker-compose.yml).

# ---- build: dependencies first, so editing the source does not reinstall them ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /build
COPY pyproject.toml ./
# The dependency list (core + deploy extra) straight from pyproject.toml: this layer only changes
# when the dependencies do.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['deploy']))" > requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt
COPY README.md ./
COPY recsys_assets ./recsys_assets
COPY recsys_serving ./recsys_serving
RUN /opt/venv/bin/pip install --no-deps .

# ---- runtime ----
FROM python:3.11-slim AS runtime
# OpenMP for implicit and FAISS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 recsys
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY deploy ./deploy
COPY workspace.yaml ./
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECSYS_PROJECT_ROOT=/app \
    RECSYS_DATA_ROOT=/data \
    DAGSTER_HOME=/opt/dagster/home
RUN mkdir -p /data /opt/dagster/home /mlflow/artifacts \
 && cp deploy/dagster.yaml /opt/dagster/home/dagster.yaml \
 && chown -R recsys:recsys /data /opt/dagster/home /mlflow
USER recsys
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
CMD ["uvicorn", "recsys_serving.main:app", "--host", "0.0.0.0", "--port", "8000"]
