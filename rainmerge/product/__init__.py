"""The product layer (optional extra `pipeline`): ZenML steps bodies, MLflow tracking and registry,
promotion gates, Hub publishing, Kubeflow entry. The merge library never imports it."""
