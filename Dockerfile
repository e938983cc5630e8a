# iceberg_lake: the `lake` CLI and service in one image.
#
#   docker build -t iceberg-lake .
#   docker run --rm iceberg-lake lake --version
#
# Every setting comes from LAKE_* environment variables (see docs/production.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 lake
WORKDIR /app

# Dependencies first so code changes do not invalidate the layer.
COPY pyproject.toml README.md ./
COPY iceberg_lake/__init__.py iceberg_lake/__init__.py
COPY catalog catalog
COPY migrations migrations
RUN pip install --no-cache-dir . && pip uninstall -y iceberg_lake

COPY iceberg_lake iceberg_lake
RUN pip install --no-cache-dir --no-deps . && rm -rf /app/build

USER lake
WORKDIR /home/lake
ENV LAKE_DATA_DIR=/home/lake/lake-data
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=3)" || exit 1
CMD ["lake", "serve", "--metrics-port", "9100"]
