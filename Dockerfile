# One image for nodes and the client: kv, and kv bench, which needs nothing the image lacks.
#   docker build .                                         (base image from a registry)
#   docker build --build-arg BASE_IMAGE=kv-base:bookworm . (base built by deploy/build-base-image.sh)
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Dependencies first, from pyproject.toml and the pinned versions in requirements.lock alone, so
# editing code does not reinstall them.
WORKDIR /app
COPY pyproject.toml requirements.lock ./
RUN python3 -m venv /opt/venv \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir -c requirements.lock -r /tmp/requirements.txt

COPY README.md ./
COPY client ./client
COPY service ./service
COPY bench ./bench
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && groupadd --system --gid 999 kv && useradd --system --uid 999 --gid kv --home-dir /home/kv --create-home kv \
 && mkdir -p /data && chown kv:kv /data

# uid 999: deploy/k8s's runAsUser names it (Kubernetes checks runAsNonRoot against a number).
USER kv
VOLUME /data
EXPOSE 5000 6379 8000
ENV KV_DATA_DIR=/data
# Healthy once ready (/readyz); a full disk stays healthy, and /healthz and the check's output say so.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["python3", "-m", "service.healthcheck"]
CMD ["python3", "-m", "service"]
