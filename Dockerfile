# kronk's server image. CPU by default:
#   docker build -t kronk:cpu .
# CUDA (the release workflow builds both):
#   docker build -t kronk:cuda \
#     --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#     --build-arg CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=on" .
# Run: docker run -p 11435:11435 -v kronk:/data kronk:cpu
#   (models, index and settings live in /data, the kronk home)
ARG BUILD_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=python:3.11-slim-bookworm

FROM ${BUILD_IMAGE} AS build
# Not tuned to the build machine's CPU (the image runs elsewhere), and no AMX kernels: some
# virtual machines report AMX without enabling it, and its first use kills the process
# (x86-64 flags: build with --build-arg LLAMA_CFLAGS= on arm64).
ARG CMAKE_ARGS="-DGGML_NATIVE=OFF"
ARG LLAMA_CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# The build context has no .git, so setuptools-scm is told the version.
ARG KRONK_VERSION=0.0.0
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && (command -v python3 >/dev/null || apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev) \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/kronk
ENV PATH=/opt/kronk/bin:$PATH
# llama-cpp-python first and on its own: the slow compile stays cached while kronk changes.
RUN CMAKE_ARGS="${CMAKE_ARGS}" CFLAGS="${LLAMA_CFLAGS}" CXXFLAGS="${LLAMA_CFLAGS}" \
    pip install --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN SETUPTOOLS_SCM_PRETEND_VERSION="${KRONK_VERSION}" pip install --no-cache-dir . \
    && kronk version

FROM ${RUNTIME_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN (command -v python3 >/dev/null || (apt-get update \
        && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*)) \
    && useradd --create-home --uid 10001 kronk \
    && mkdir /data && chown kronk /data
COPY --from=build /opt/kronk /opt/kronk
ENV PATH=/opt/kronk/bin:$PATH KRONK_HOME=/data
USER kronk
VOLUME /data
EXPOSE 11435
ENTRYPOINT ["kronk"]
CMD ["server", "start", "--host", "0.0.0.0", "--port", "11435"]
