# One image for every service of the data space (hub, connectors, Flower).
FROM python:3.11-slim
WORKDIR /app
# torch first, pinned: a CPU build is served for this exact pin.
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY dataspace ./dataspace
RUN pip install --no-cache-dir .
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
ENTRYPOINT []
