# orch's controller and NVML agent: `docker build -t ghcr.io/orch-dev/orch:0.1.0 .`
# The manifests run it as user 10001 with a read-only root filesystem and an emptyDir at /tmp.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp

WORKDIR /src
COPY pyproject.toml README.md cli.py ./
COPY orchestrator ./orchestrator
# psycopg: the PostgreSQL driver behind ORCH_DATABASE_URL=postgresql+psycopg://... in the cluster.
RUN pip install . "psycopg[binary]>=3.1.18" \
    && groupadd --gid 10001 orch \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin orch \
    && rm -rf /src

WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 9400
ENTRYPOINT ["orch"]
CMD ["--help"]
