# Conveyor's production image: one image for every process (api, workers, beat, flower,
# migrate); docker-compose.yml picks the command. Debian's chromium is the crawl workers'
# browser (Playwright launches /usr/bin/chromium; no `playwright install`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CONVEYOR_DATA_DIR=/data \
    CONVEYOR_API_HOST=0.0.0.0

# chromium: crawl workers' headless browser; postgresql-client: pg_dump/pg_restore for
# backups and restores; curl: container healthchecks; tini: PID 1 that reaps children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        chromium fonts-liberation postgresql-client curl tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first (cached until pyproject.toml changes), then the code.
COPY pyproject.toml README.md ./
RUN mkdir -p common api workers tasks crawler inference config store cli webhooks \
        deployments resources diagnostics monitoring jobs plans idempotency \
        projects assistants rag billing alerts access \
    && for p in common api workers tasks crawler inference config store cli webhooks \
        deployments resources diagnostics monitoring jobs plans idempotency \
        projects assistants rag billing alerts access; do touch "$p/__init__.py"; done \
    && pip install ".[inference,deploy,resources]" \
    && pip uninstall -y conveyor \
    && rm -rf common api workers tasks crawler inference config store cli webhooks \
        deployments resources diagnostics monitoring jobs plans idempotency \
        projects assistants rag billing alerts access build *.egg-info

COPY . .
RUN pip install --no-deps . \
    && rm -rf build *.egg-info \
    && useradd --create-home --uid 10001 conveyor \
    && mkdir -p /data && chown conveyor:conveyor /data

USER conveyor
VOLUME ["/data"]
EXPOSE 8000 5555
ENTRYPOINT ["tini", "--", "conveyor"]
CMD ["api"]
