# The operator image. Build stage installs the package into a virtual environment;
# the final stage copies only that environment and runs as a non-root user.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python3 -m venv /opt/hybrid-compute \
 && /opt/hybrid-compute/bin/pip install --no-cache-dir .

FROM ${BASE_IMAGE}
COPY --from=build /opt/hybrid-compute /opt/hybrid-compute
ENV PATH=/opt/hybrid-compute/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["hybrid-compute"]
CMD ["run"]
