# syntax=docker/dockerfile:1
#
# sse-gateway container image.
#
#   docker build -t sse-gateway .
#   docker run -d --name sse-gateway -p 8080:8080 \
#     -v ./config.yaml:/etc/sse-gateway/config.yaml:ro \
#     -e BACKEND_TOKEN \
#     --ulimit nofile=65536:65536 --stop-timeout 30 \
#     sse-gateway
#
# The config is mounted read-only; it must listen on all interfaces of the
# container, port 8080 (the port EXPOSEd and probed by HEALTHCHECK below):
#   server:
#     listen: ["0.0.0.0:8080"]
# 127.0.0.1 would only be reachable from inside the container. Secrets come from
# the environment (-e / --env-file) as ${VAR} in the YAML.
#
# Stopping: SIGTERM ends every stream, spread over server.drain_window_s
# (default 10 s), and the process exits within the window plus about a second;
# `docker stop` waits only 10 s by default before SIGKILL, hence
# --stop-timeout 30 (compose: stop_grace_period: 30s).
#
# One connection holds one file descriptor: raise nofile as above for many
# clients. Needs BuildKit (the default builder since Docker 23) for RUN --mount.

# --- build: the project's wheel and the wheels of all its dependencies ---------
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check \
        --wheel-dir /wheels .

# --- runtime ---------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the build stage, so they never become a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index /wheels/*.whl \
 && groupadd --system --gid 10001 sse-gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sse-gateway \
 && mkdir -p /etc/sse-gateway
# Numeric, so that runtimes can check it is not root (Kubernetes runAsNonRoot).
USER 10001:10001

EXPOSE 8080
STOPSIGNAL SIGTERM
# slim has no curl: probe with Python's urllib. No proxy: HTTP(S)_PROXY from the
# environment must not divert a probe of localhost. Non-2xx or no answer: exit 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8080/healthz', timeout=4)"]

ENTRYPOINT ["sse-gateway"]
CMD ["run", "--config", "/etc/sse-gateway/config.yaml"]
