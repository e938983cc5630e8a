# iceberg_lake: the `lake` CLI and service in one image.
#
#   docker build -t iceberg-lake .
#   docker run --rm iceberg-lake lake --version
#
# Every setting comes from LAKE_* environment variables (see docs/production.md).
# The wheel is built in a stage with a C compiler (the replay's encoding kernels,
# iceberg_lake/timetravel/_canonical.c); the image itself has none.
FROM python:3.11-slim AS wheel
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md hatch_build.py ./
COPY catalog catalog
COPY migrations migrations
COPY iceberg_lake iceberg_lake
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 lake
WORKDIR /app

# Dependencies first (from pyproject.toml alone) so code changes do not invalidate the layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels

USER lake
WORKDIR /home/lake
ENV LAKE_DATA_DIR=/home/lake/lake-data
EXPOSE 9100
HEALTHCHECK --interval=15s --timeout=5s --retries=5 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=3)" || exit 1
CMD ["lake", "serve", "--metrics-port", "9100"]
