# Kith's image: `make image` (which builds kith-base:bookworm first: deploy/base-image.sh, no registry
# needed) or `docker build --network host -t kith .` once deploy/extras/ is staged
# (deploy/build-image.sh: optional local wheels and extra CA certificates for the build only).
#
# builder: a venv in /opt/kith/venv with torch (the CPU build) and the project, and the embedding
#          model converted into /opt/kith/cache (so the first start does not convert it);
# runtime: the same base, the venv and the cache, a non-root user, /data as the volume.

FROM kith-base:bookworm AS builder
ARG TORCH_VERSION=2.13.0
# used only when deploy/extras/wheels has no torch wheel: the CPU-only build (PyPI's pulls in CUDA)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
# extras/ca: CA certificates the build's network needs (a TLS-inspecting proxy); builder stage only
COPY deploy/extras/ /tmp/extras/
COPY constraints.txt /src/
RUN set -e; \
    if ls /tmp/extras/ca/*.crt >/dev/null 2>&1; then \
        cp /tmp/extras/ca/*.crt /usr/local/share/ca-certificates/ && update-ca-certificates >/dev/null; fi; \
    python3.11 -m venv /opt/kith/venv; \
    /opt/kith/venv/bin/pip install -q --upgrade pip; \
    if ls /tmp/extras/wheels/torch-${TORCH_VERSION}*.whl >/dev/null 2>&1; then \
        /opt/kith/venv/bin/pip install -q -c /src/constraints.txt --find-links /tmp/extras/wheels torch==${TORCH_VERSION}; \
    else \
        /opt/kith/venv/bin/pip install -q -c /src/constraints.txt --extra-index-url ${TORCH_INDEX} torch==${TORCH_VERSION}; fi
# the dependencies first (this layer is rebuilt only when pyproject.toml or constraints.txt change),
# kith[postgresql]: psycopg for storage.dialogue: postgresql://... (compose's postgres profile)
COPY pyproject.toml /src/
RUN /opt/kith/venv/bin/python -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
        print("\n".join(p["dependencies"] + p["optional-dependencies"]["postgresql"]))' > /tmp/requirements.txt \
    && /opt/kith/venv/bin/pip install -q -c /src/constraints.txt -r /tmp/requirements.txt
# then the project itself, and the embedding model converted ahead into the image
COPY README.md /src/
COPY actors /src/actors
COPY memory /src/memory
COPY providers /src/providers
COPY config /src/config
COPY benchmarks /src/benchmarks
COPY tiers /src/tiers
COPY i18n /src/i18n
COPY features /src/features
COPY transports /src/transports
COPY operations /src/operations
COPY cli.py /src/
RUN /opt/kith/venv/bin/pip install -q --no-deps /src \
    && KITH_CACHE_DIR=/opt/kith/cache /opt/kith/venv/bin/python -m providers.openvino_encoder --prepare \
    && rm -rf /tmp/extras /tmp/requirements.txt

FROM kith-base:bookworm
LABEL org.opencontainers.image.title="kith" \
      org.opencontainers.image.description="A self-hosted Telegram LLM bot that remembers"
RUN useradd --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin kith \
    && mkdir -p /data /config && chown kith:kith /data
COPY --from=builder /opt/kith/venv /opt/kith/venv
# the cache is the user's: on a CPU of another kind the first start converts the model again into it
COPY --from=builder --chown=kith:kith /opt/kith/cache /opt/kith/cache
COPY deploy/kith.yaml deploy/kith-postgres.yaml /config/
ENV PATH=/opt/kith/venv/bin:$PATH \
    KITH_DATA_DIR=/data \
    KITH_CONFIG=/config/kith.yaml \
    KITH_CACHE_DIR=/opt/kith/cache \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    PYTHONUNBUFFERED=1
USER kith
WORKDIR /data
VOLUME ["/data"]
# the control server (deploy/kith.yaml); not published on the host by compose.yaml
EXPOSE 8787
# /healthz answers once the control server listens (before the model loads and Telegram connects);
# /readyz says whether the bot is fully up. The start period covers the model's load.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8787/healthz"]
# tini as PID 1: forwards SIGTERM to kith (which drains, actors.drain_timeout_s) and reaps children
ENTRYPOINT ["/usr/bin/tini", "--", "kith"]
CMD ["run"]
