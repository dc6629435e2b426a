# The podq controller image: CPython 3.11, the controller's pinned wheels (controller/requirements.txt),
# the controller package and the worker_image modules it imports (the worker protocol, the network policy
# of dataset URLs). It runs the kubernetes launcher only: the worker's engine (polars, pyarrow, sqlglot) is
# in the worker image, not here. No pip, no compilers. Build from the repository root:
#
#   docker build -t podq-controller:dev .
#
# It runs as uid/gid 65532 and writes only to PODQ_DATA_DIR (/var/lib/podq, the store's volume) and
# /tmp, so it runs under a read-only root filesystem; bytecode is compiled here, at build time. Only
# classic Dockerfile instructions are used: the legacy builder and BuildKit both build it.
#
# Build arguments:
#   BASE_IMAGE   runtime base with python3 (3.11) on PATH; any Debian-like image will do.
#   BUILD_IMAGE  base of the build stage; must have `python3 -m pip`. Default: BASE_IMAGE.
#   PIP_NO_INDEX 1: install only from the wheels in the build context's wheelhouse/ directory, with no
#                network (tests/e2e/cluster/build-image.sh does this). Default 0: from the index.

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG BUILD_IMAGE=${BASE_IMAGE}

FROM ${BUILD_IMAGE} AS build
ARG PIP_NO_INDEX=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# `wheelhous[e]` matches the wheelhouse when the context has one and nothing otherwise.
COPY controller/requirements.txt wheelhous[e] /src/
RUN python3 -m pip install --no-compile --only-binary=:all: --find-links /src \
        --target /opt/podq/site -r /src/requirements.txt \
    && rm -rf /opt/podq/site/bin

FROM ${BASE_IMAGE}
ENV PYTHONPATH=/opt/podq:/opt/podq/site \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    PODQ_LAUNCHER=kubernetes \
    PODQ_HOST=0.0.0.0 \
    PODQ_PORT=8000 \
    PODQ_DATA_DIR=/var/lib/podq
COPY --from=build /opt/podq/site /opt/podq/site
COPY controller/ /opt/podq/controller/
# The client commands of `podq` (controller/cli.py builds its parser from podq/cli.py).
COPY podq/ /opt/podq/podq/
COPY worker_image/__init__.py worker_image/confine.py worker_image/netpolicy.py worker_image/protocol.py /opt/podq/worker_image/
# A base that ships pip (the python:* images) loses it here, together with ensurepip's copy of it.
# unchecked-hash bytecode is used as is: the files of an image never change under it.
RUN rm -rf /usr/local/bin/pip* /usr/local/lib/python3*/site-packages/pip \
        /usr/local/lib/python3*/site-packages/pip-*.dist-info /usr/local/lib/python3*/ensurepip/_bundled \
        /opt/podq/controller/requirements.txt \
    && ! python3 -m pip --version 2>/dev/null \
    && python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/podq \
    && python3 -c 'import controller.http.app, controller.launchers.kubernetes.launcher' \
    && mkdir -p /var/lib/podq && chown 65532:65532 /var/lib/podq
WORKDIR /opt/podq
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "controller"]
CMD ["serve"]
