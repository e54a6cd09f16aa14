# rainmerge image for CPU and GPU steps alike (ZenML Kubernetes orchestrator / KFP components).
# torch's CUDA wheel brings the CUDA runtime, so a slim Python base is enough; GPU nodes need only
# the NVIDIA driver (device plugin). No secrets are baked in: HF_TOKEN comes from a Secret at runtime.
# The lock carries the S3 artifact-store client (s3fs, boto3), kfp-kubernetes and MLflow's auth app.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf ZENML_ANALYTICS_OPT_IN=false ZENML_AUTO_OPEN_DASHBOARD=false \
    NLTK_DATA=/opt/nltk_data TOKENIZERS_PARALLELISM=false

RUN apt-get update && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 rainmerge && useradd --create-home --uid 10001 --gid 10001 rainmerge

WORKDIR /app
COPY requirements.lock pyproject.toml ./
# torch first and pinned (the lock's version) from the CUDA index; then the locked stack
RUN pip install --index-url "$TORCH_INDEX" "torch==$(grep '^torch==' requirements.lock | cut -d= -f3)" \
    && grep -v '^torch==' requirements.lock > /tmp/lock.txt \
    && pip install -r /tmp/lock.txt -c /tmp/lock.txt psycopg2-binary==2.9.10 && rm /tmp/lock.txt

COPY rainmerge ./rainmerge
COPY steps ./steps
COPY pipelines ./pipelines
COPY configs ./configs
COPY assets ./assets
COPY README.md ./
RUN pip install --no-deps -e . \
    && python -c "from rainmerge.eval.ifeval import ensure_punkt; ensure_punkt('/opt/nltk_data')" \
    && mkdir -p /data && chown -R 10001:10001 /data /app

# numeric, so a kubelet enforcing runAsNonRoot can verify it (a name cannot be checked)
USER 10001:10001
ENTRYPOINT ["python", "-m", "rainmerge"]
CMD ["--help"]
