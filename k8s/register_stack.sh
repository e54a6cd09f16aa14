#!/usr/bin/env bash
# Register the ZenML stack for the cluster in k8s/ (run once, from a machine with kubectl access).
# Needs the ZenML Kubernetes and S3 integrations in *that* environment (they pin old client
# versions, so keep them out of the project's lock):  pip install "zenml[server]==0.98.0" && zenml integration install kubernetes s3
set -euo pipefail
: "${KUBE_CONTEXT:?set KUBE_CONTEXT to the kubectl context of the cluster}"
: "${ARTIFACT_STORE:?set ARTIFACT_STORE, e.g. s3://my-bucket/rainmerge}"
: "${REGISTRY:?set REGISTRY, e.g. ghcr.io/your-org}"
NAMESPACE="${NAMESPACE:-rainmerge}"
MLFLOW_URI="${MLFLOW_URI:-http://mlflow.${NAMESPACE}.svc:5000}"

zenml orchestrator register rainmerge-k8s --flavor=kubernetes \
  --kubernetes_context="$KUBE_CONTEXT" --kubernetes_namespace="$NAMESPACE" \
  --service_account_name=rainmerge-orchestrator --step_pod_service_account_name=rainmerge-step
zenml artifact-store register rainmerge-artifacts --flavor=s3 --path="$ARTIFACT_STORE"
zenml container-registry register rainmerge-registry --flavor=default --uri="$REGISTRY"
zenml experiment-tracker register rainmerge-mlflow --flavor=mlflow --tracking_uri="$MLFLOW_URI" \
  --tracking_insecure_tls=false
zenml stack register rainmerge-k8s -o rainmerge-k8s -a rainmerge-artifacts -c rainmerge-registry \
  -e rainmerge-mlflow --set
echo "stack rainmerge-k8s registered and active; MLflow at $MLFLOW_URI"
