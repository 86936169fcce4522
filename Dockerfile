# syntax=docker/dockerfile:1
#
# connectproxy as a container: a slim image, a non-root user, only the wheels installed.
#
#   docker build -t connectproxy .            (BuildKit, the default since Docker 23)
#   docker build --build-arg CONNECTPROXY_PURE_PYTHON=1 -t connectproxy .
#                                             (plain Python: no compiler, slower, same behaviour)
#   docker run -d --name connectproxy -p 3128:3128 \
#       -v "$PWD"/connectproxy.yaml:/etc/connectproxy/connectproxy.yaml:ro \
#       --stop-timeout 35 connectproxy
#
# Config: /etc/connectproxy/connectproxy.yaml is read if you mount it (as above); without it the
# embedded default serves (0.0.0.0:3128, Defender for IoT destinations, private-network
# clients). Paths inside the config (htpasswd_file, certificates) are relative to
# /etc/connectproxy, so mount the whole folder instead when you have such files:
#   -v "$PWD"/connectproxy-config:/etc/connectproxy:ro
# The proxy runs as uid 10001, so mounted files must be readable by it (mode 0644, or owned by
# 10001). Check a config with the image itself: docker run --rm -v ...:ro connectproxy check-config
#
# Metrics: the metrics listener defaults to 127.0.0.1:9128, which is enough for the HEALTHCHECK
# below (it runs inside the container). To scrape /metrics or probe /readyz from outside, set
#   metrics:
#     listen: "0.0.0.0:9128"
# and publish it: -p 9128:9128. Keep the HEALTHCHECK port in step if you move the listener.
#
# Stopping: SIGTERM drains open tunnels for timeouts.shutdown_grace (default 30 s), but
# `docker stop` kills after 10 s unless told otherwise: use --stop-timeout 35 (docker run) or
# stop_grace_period: 35s (compose), i.e. shutdown_grace plus a margin.

# ---- builder: resolve and build every wheel (the package and its dependencies) --------------
FROM python:3.11-slim AS builder
# Which build: empty (the default) compiles the connection path with mypyc (setup.py); 1 builds
# plain Python. Declared here so that --build-arg reaches the RUN lines below; any other value
# than 1 means the compiled build (setup.py alone would take "0" for plain Python).
ARG CONNECTPROXY_PURE_PYTHON=
WORKDIR /src
# .dockerignore keeps the virtualenv, git history, tests and caches out of this context.
COPY . .
# The compiled build needs a C compiler in this stage; the slim image already has the Python
# headers. uvloop, PyYAML and bcrypt ship binary wheels for amd64 and arm64. Compilers stay here,
# never in the final stage; the plain-Python build needs none.
RUN if [ "$CONNECTPROXY_PURE_PYTHON" != 1 ]; then \
        apt-get update \
     && apt-get install -y --no-install-recommends gcc libc6-dev \
     && rm -rf /var/lib/apt/lists/*; \
    fi
RUN if [ "$CONNECTPROXY_PURE_PYTHON" = 1 ]; then export CONNECTPROXY_PURE_PYTHON=1; \
    else unset CONNECTPROXY_PURE_PYTHON; fi \
 && pip wheel --no-cache-dir --wheel-dir /wheels ".[bcrypt]"

# ---- final: the interpreter, the installed wheels, nothing else ---------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 connectproxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin connectproxy \
 && mkdir -p /etc/connectproxy
# Install from the builder's wheels through a bind mount, so the wheels never become a layer.
# The version line says which build was installed; a build argument that did not take effect
# fails the build here instead of shipping the other build silently.
ARG CONNECTPROXY_PURE_PYTHON=
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels "connectproxy[bcrypt]" \
 && if [ "$CONNECTPROXY_PURE_PYTHON" = 1 ]; then expected=no; else expected=yes; fi \
 && connectproxy --version | grep -F "(compiled: $expected)"

USER 10001:10001
EXPOSE 3128 9128
STOPSIGNAL SIGTERM
# urllib, not curl (slim has no curl); the empty ProxyHandler ignores any http_proxy variable,
# which would otherwise send the probe through a proxy. A non-2xx answer raises: unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:9128/healthz', timeout=4)"]
ENTRYPOINT ["connectproxy"]
CMD ["run"]
