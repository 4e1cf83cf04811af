# Med-SegLens API and worker image. CPU by default; for NVIDIA GPUs build with a CUDA base, e.g.
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t medseglens:cuda .
# The install is the README's `make setup`; the default command is `medseglens serve`
# (the worker service runs `medseglens worker` from the same image).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Where pip finds torch: the CPU wheels by default (no multi-GB CUDA libraries in the CPU image).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEBIAN_FRONTEND=noninteractive \
    MEDSEGLENS_DATA_DIR=/data \
    MEDSEGLENS_ZOO=/zoo \
    PATH=/app/.venv/bin:${PATH}

# make, and python3 + venv where the base image lacks them (CUDA images).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && (command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1 \
     || apt-get install -y --no-install-recommends python3 python3-venv python3-pip) \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first (cached while only the code changes).
COPY pyproject.toml Makefile README.md ./
COPY medseglens_core ./medseglens_core
COPY service ./service
RUN PIP_EXTRA_INDEX_URL=${TORCH_INDEX} make setup PY=python3 \
 && rm -rf /root/.cache/pip

COPY openapi ./openapi
COPY docs ./docs

RUN useradd --create-home --uid 10001 medseglens \
 && mkdir -p /data /zoo && chown -R medseglens /data /zoo /app
USER medseglens
VOLUME ["/data", "/zoo"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"

CMD ["medseglens", "serve", "--host", "0.0.0.0", "--port", "8000"]
