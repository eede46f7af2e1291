# syntax=docker/dockerfile:1
# authgate: multi-stage build; the final image has no compiler and runs as a non-root user.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Everything goes into one virtualenv that the final stage copies whole.
RUN python -m venv /opt/authgate && /opt/authgate/bin/pip install --no-cache-dir .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="authgate" \
      org.opencontainers.image.description="Bearer-token authentication gateway"
RUN groupadd --system --gid 10001 authgate \
 && useradd --system --uid 10001 --gid authgate --home-dir /data --create-home authgate
COPY --from=build /opt/authgate /opt/authgate
ENV PATH=/opt/authgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AUTHGATE_LISTEN=0.0.0.0:8080 \
    AUTHGATE_ADMIN_LISTEN=0.0.0.0:8081 \
    AUTHGATE_STORE=sqlite:////data/authgate.db
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2)"]
ENTRYPOINT ["authgate"]
CMD ["serve"]
