#!/usr/bin/env bash
# Register the ZenML stack for the cluster in k8s/ against the ZenML server (k8s/base/zenml.yaml), once,
# from a machine with kubectl access:
#   zenml login http://localhost:8080   # after: kubectl -n rainmerge port-forward svc/zenml 8080:8080
#   KUBE_CONTEXT=… ARTIFACT_STORE=s3://bucket/rainmerge REGISTRY=ghcr.io/your-org \
#     MLFLOW_USERNAME=… MLFLOW_PASSWORD=… bash k8s/register_stack.sh
# Only registration happens here; the flavors' client libraries (kubernetes, s3fs) are needed where the
# pipeline runs, i.e. in the image. tests/test_deployed.py runs this script against a real ZenML server.
set -euo pipefail
: "${KUBE_CONTEXT:?set KUBE_CONTEXT to the kubectl context of the cluster}"
: "${ARTIFACT_STORE:?set ARTIFACT_STORE, e.g. s3://my-bucket/rainmerge}"
: "${REGISTRY:?set REGISTRY, e.g. ghcr.io/your-org}"
: "${MLFLOW_USERNAME:?set MLFLOW_USERNAME (the MLflow basic-auth user, secret mlflow-auth)}"
: "${MLFLOW_PASSWORD:?set MLFLOW_PASSWORD}"
NAMESPACE="${NAMESPACE:-rainmerge}"
MLFLOW_URI="${MLFLOW_URI:-http://mlflow.${NAMESPACE}.svc:5000}"
S3_ENDPOINT="${S3_ENDPOINT:-}"          # an S3-compatible server (MinIO, Ceph…); empty for AWS S3
ACTIVATE="${ACTIVATE:-true}"

# the MLflow credentials live in a ZenML secret, referenced by the tracker, never in the component itself
# (ZenML 0.98 refuses an http:// tracker without an authentication method)
zenml secret create rainmerge-mlflow --username="$MLFLOW_USERNAME" --password="$MLFLOW_PASSWORD" >/dev/null \
  || zenml secret update rainmerge-mlflow --username="$MLFLOW_USERNAME" --password="$MLFLOW_PASSWORD" >/dev/null
zenml orchestrator register rainmerge-k8s --flavor=kubernetes \
  --kubernetes_context="$KUBE_CONTEXT" --kubernetes_namespace="$NAMESPACE" \
  --service_account_name=rainmerge-orchestrator --step_pod_service_account_name=rainmerge-step
store_args=(--flavor=s3 --path="$ARTIFACT_STORE")
if [[ -n "$S3_ENDPOINT" ]]; then store_args+=(--client_kwargs="{\"endpoint_url\": \"$S3_ENDPOINT\"}"); fi
zenml artifact-store register rainmerge-artifacts "${store_args[@]}"
zenml container-registry register rainmerge-registry --flavor=default --uri="$REGISTRY"
zenml experiment-tracker register rainmerge-mlflow --flavor=mlflow --tracking_uri="$MLFLOW_URI" \
  --tracking_username='{{rainmerge-mlflow.username}}' --tracking_password='{{rainmerge-mlflow.password}}'
zenml stack register rainmerge-k8s -o rainmerge-k8s -a rainmerge-artifacts -c rainmerge-registry -e rainmerge-mlflow
if [[ "$ACTIVATE" == true ]]; then zenml stack set rainmerge-k8s; fi
echo "stack rainmerge-k8s registered$([[ "$ACTIVATE" == true ]] && echo ' and active'); MLflow at $MLFLOW_URI"
