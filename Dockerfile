# Two images from one file:
#   runtime  (default target): every service of docker-compose.yml except the API: the Dagster
#            code servers, webserver and daemon, the MLflow server and the stream simulator.
#   api      the recommendation API alone: recsys_serving and its slim dependencies, no dagster,
#            no pipeline code; `--build-arg SERVING_EXTRAS=alias` adds MLflow for alias mode.

# ---- the pipeline image's dependencies first, so editing the source does not reinstall them ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /build
COPY pyproject.toml ./
# The dependency list (core + pipeline, alias and deploy extras) straight from pyproject.toml:
# this layer only changes when the dependencies do.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
x = p['optional-dependencies']; wanted = p['dependencies'] + x['alias'] + x['pipeline'] + x['deploy']; \
print('\n'.join(d for d in wanted if not d.startswith(p['name'])))" > requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt
COPY README.md ./
COPY recsys_assets ./recsys_assets
COPY recsys_serving ./recsys_serving
RUN /opt/venv/bin/pip install --no-deps .

# ---- the API's dependencies: the core list only (plus MLflow when asked for) ----
FROM python:3.11-slim AS api-build
ARG SERVING_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /build
COPY pyproject.toml ./
RUN SERVING_EXTRAS="$SERVING_EXTRAS" python -c "import os, tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = os.environ['SERVING_EXTRAS']; \
print('\n'.join(p['dependencies'] + (p['optional-dependencies'][extras] if extras else [])))" > requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt
COPY README.md ./
# Only the serving package: without recsys_assets in the context the wheel holds recsys_serving alone.
COPY recsys_serving ./recsys_serving
RUN /opt/venv/bin/pip install --no-deps .

# ---- api ----
FROM python:3.11-slim AS api
# OpenMP for FAISS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 recsys \
 && mkdir -p /data && chown recsys:recsys /data
COPY --from=api-build /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RECSYS_PROJECT_ROOT=/app \
    RECSYS_DATA_ROOT=/data \
    NUMBA_CACHE_DIR=/opt/numba-cache
# The request path's compiled kernels, built into the image: a container starts without 8 s of
# compiling (the cache is keyed to these installed files).
RUN python -c "from recsys_serving.engine import compile_kernels; compile_kernels()" \
 && chown -R recsys:recsys /opt/numba-cache
USER recsys
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
CMD ["uvicorn", "recsys_serving.main:app", "--host", "0.0.0.0", "--port", "8000"]

# ---- runtime (the default target: last in the file) ----
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
    DAGSTER_HOME=/opt/dagster/home \
    NUMBA_CACHE_DIR=/opt/numba-cache
RUN mkdir -p /data /opt/dagster/home /mlflow/artifacts \
 && cp deploy/dagster.yaml /opt/dagster/home/dagster.yaml \
 && python -c "from recsys_serving.engine import compile_kernels; compile_kernels()" \
 && chown -R recsys:recsys /data /opt/dagster/home /mlflow /opt/numba-cache
USER recsys
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"]
CMD ["uvicorn", "recsys_serving.main:app", "--host", "0.0.0.0", "--port", "8000"]
