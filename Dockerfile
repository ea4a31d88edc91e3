# The conversation router in a container: a slim Python base, a non-root user, the store on a
# volume. See "Running it as a service" in the README.
#
#   docker build -t conversation-router .
#   docker run -d --name router -p 8080:8080 -v router-store:/var/lib/router \
#     -v "$PWD/router.toml:/etc/router/router.toml:ro" conversation-router
#   docker kill --signal=HUP router    # reload the config
#   docker stop router                 # SIGTERM: a clean stop within the 10 s default

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system router \
    && useradd --system --gid router --home-dir /var/lib/router --shell /usr/sbin/nologin router

# The project into its own virtual environment, owned by root: the router user cannot
# change its own code.
WORKDIR /opt/router
COPY pyproject.toml README.md ./
COPY router ./router
COPY actors ./actors
# A C compiler for the store's commit thread and WAL writes (router/io/_commit.c, _wal_vfs.c),
# removed once they are built.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python -m venv /opt/router/.venv \
    && /opt/router/.venv/bin/pip install /opt/router \
    && (cd / && /opt/router/.venv/bin/python -c \
        "import router.io._commit; from router.io.wal_vfs import usable; assert usable()") \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* /opt/router/router /opt/router/actors
ENV PATH=/opt/router/.venv/bin:$PATH

COPY deploy/router.docker.toml /etc/router/router.toml
RUN mkdir -p /var/lib/router && chown router:router /var/lib/router && chmod 0750 /var/lib/router
VOLUME /var/lib/router

USER router
WORKDIR /var/lib/router

# The public port; the debug port (9090) stays on the container's loopback.
EXPOSE 8080

# Inside the container, on the debug port: a 503 (the store has failed) or no answer is
# unhealthy. The slim image has no curl; Python's urllib raises on anything but a 2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=4)"]

# SIGTERM stops it cleanly: ports closed, actors stopped, store closed; SIGHUP reloads.
STOPSIGNAL SIGTERM
ENTRYPOINT ["router"]
CMD ["serve", "--config", "/etc/router/router.toml", "--log-format", "json"]
