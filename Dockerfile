# The operator image (also the GPU agent's). The build stage installs the package
# into a virtual environment; the final stage copies only that environment, so no
# compiler, pip cache or source tree reaches it, and runs as a non-root user.
#
# The base is pinned by tag and digest (the multi-arch index of Docker Hub's
# python:3.11.17-slim-bookworm); bump both together. BASE_IMAGE may name any
# Debian bookworm image with python3 and its venv module, e.g. a local one.
ARG BASE_IMAGE=docker.io/library/python:3.11.17-slim-bookworm@sha256:0a310eeecf4e1f5a0743f9a6520c90c88d089c903ca5fd283f501e3a805f5f89

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python3 -m venv /opt/hybrid-compute \
 && /opt/hybrid-compute/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/hybrid-compute/bin/hybrid-compute --help >/dev/null

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="hybrid-compute" \
      org.opencontainers.image.description="Kubernetes operator for a home-lab hybrid compute layer: local llama.cpp models, cloud models, one LiteLLM endpoint" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/hybrid-compute /opt/hybrid-compute
# Bytecode was compiled at install time; the root filesystem is read-only at run time.
ENV PATH=/opt/hybrid-compute/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# 65532 is the conventional "nonroot" user; the chart runs the pod as the same.
USER 65532:65532
# health, operator API, metrics, GPU agent
EXPOSE 8080 8081 9090 9400
ENTRYPOINT ["hybrid-compute"]
CMD ["run"]
