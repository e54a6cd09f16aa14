"""The deployed topology on loopback, every server real and started here: an S3-compatible server (moto)
as the ZenML artifact store, a ZenML REST server, and an MLflow server with `--serve-artifacts`, the
host check on and the basic-auth app. The stack script registers against the ZenML server; the toy
pipeline runs, registers its weights through the MLflow server, promotes, and lineage/audit resolve it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
USER, PASSWORD = "admin", "loopback-Only-pw1"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(stack: contextlib.ExitStack, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A server in its own process group, torn down (group-wide) when the stack closes."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    stack.callback(stop)
    return proc


def _wait(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited: {log.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(url, timeout=5).status == 200:
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[0]} not up in {timeout} s: {log.read_text()[-2000:]}")
        time.sleep(1)


def _run(cmd: list[str], env: dict[str, str], timeout: float) -> str:
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd[:4])}…\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r.stdout + r.stderr


def test_toy_pipeline_against_real_servers(tmp_path):
    if not (ROOT / "assets" / "toy" / "reasoning" / "config.json").is_file():
        pytest.skip("toy trio not built")
    s3, mlf, zen = _port(), _port(), _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_", "AWS_"))}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PYTHONPATH": str(ROOT),
            "ZENML_CONFIG_PATH": str(tmp_path / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false",
            "ZENML_AUTO_OPEN_DASHBOARD": "false", "ZENML_ENABLE_REPO_INIT_WARNINGS": "false",
            "AWS_ACCESS_KEY_ID": "loopback", "AWS_SECRET_ACCESS_KEY": "loopback", "AWS_DEFAULT_REGION": "us-east-1"}
    auth_ini = tmp_path / "basic_auth.ini"
    auth_ini.write_text("[mlflow]\ndefault_permission = READ\n"
                        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = {USER}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    # the server side of the MLflow manifest: host check on (in-cluster name + loopback), basic auth
    mlflow_env = env | {"MLFLOW_AUTH_CONFIG_PATH": str(auth_ini), "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD,
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": "loopback-test-key"}
    mlflow_cmd = [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--serve-artifacts",
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--artifacts-destination", str(tmp_path / "mlflow-artifacts"), "--host", "127.0.0.1",
                  "--port", str(mlf), "--workers", "1",
                  "--allowed-hosts", f"127.0.0.1:{mlf},mlflow.rainmerge.svc:5000"]
    zen_cmd = [str(BIN / "zenml"), "login", "--local", "--blocking", "--port", str(zen)]
    with contextlib.ExitStack() as stack:
        servers = [(_start(stack, cmd, tmp_path / log, e), url, tmp_path / log, t) for cmd, url, log, e, t in (
            (zen_cmd, f"http://127.0.0.1:{zen}/health", "zenml.log", env, 300),
            ([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3)], f"http://127.0.0.1:{s3}/", "s3.log", env,
             60),
            (mlflow_cmd, f"http://127.0.0.1:{mlf}/health", "mlflow.log", mlflow_env, 120))]
        for proc, url, log, timeout in servers:  # started together, waited for in turn
            _wait(proc, url, log, timeout)
        _host_check_and_auth_are_on(mlf)
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3}", region_name="us-east-1",
                     aws_access_key_id="loopback", aws_secret_access_key="loopback").create_bucket(Bucket="rainmerge")
        env |= {"ZENML_STORE_URL": f"http://127.0.0.1:{zen}", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlf}",
                "MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD,
                "RAINMERGE_PAYLOAD_ROOT": str(tmp_path / "pvc")}
        # the cluster's stack script completes against this server (it registers, it does not run)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(KUBECONFIG)
        out = _run(["bash", "k8s/register_stack.sh"], env | {
            "KUBECONFIG": str(kubeconfig), "KUBE_CONTEXT": "loopback", "ARTIFACT_STORE": "s3://rainmerge/zenml",
            "S3_ENDPOINT": f"http://127.0.0.1:{s3}", "REGISTRY": "localhost:5000/rainmerge",
            "MLFLOW_URI": f"http://127.0.0.1:{mlf}", "MLFLOW_USERNAME": USER, "MLFLOW_PASSWORD": PASSWORD,
            "ACTIVATE": "false"}, 300)
        assert "stack rainmerge-k8s registered" in out
        # the run itself: local orchestrator, the same S3 artifact store component
        _run([str(BIN / "zenml"), "stack", "register", "loopback", "-o", "default", "-a", "rainmerge-artifacts",
              "--set"], env, 120)
        _run([str(BIN / "python"), "-m", "rainmerge", "run", "--config", "configs/toy.yaml",
              # lean: this test is about the hand-offs, not the scores
              "--set", "evaluation.limit=2", "--set", "evaluation.max_new_tokens=16", "--set", "evaluation.device=cpu",
              "--set", "device=cpu", "--set", "reasoning_calibration.max_samples=8",
              "--set", "instruction_calibration.max_samples=8", "--set", "layers=[1]",
              "--set", "hub.enabled=false", "--set", "promotion.min_gain_over_lrm=-1",
              "--set", "promotion.max_truncation_increase=1", "--set", "promotion.max_malformed_increase=1",
              "--set", "promotion.max_reasoning_drop=1",
              "--set", "tracking.registered_model=deployed-toy", "--set", "tracking.zenml_model=deployed-toy"],
             env, 1800)
        lineage = _run([str(BIN / "python"), "-m", "rainmerge", "lineage", "deployed-toy", "1"], env, 120)
        audit = _run([str(BIN / "python"), "-m", "rainmerge", "audit", "deployed-toy"], env, 120)
    assert "runs:/" in lineage and "champion" in lineage, lineage
    assert "deployed-toy" in audit and "champion" in audit, audit
    # the weights went through the server's proxied store (one upload), not by a path only this host can read
    uploaded = [f for f in (tmp_path / "mlflow-artifacts").rglob("*.safetensors") if "merged_model" in f.parts]
    assert uploaded, "no weights in the MLflow artifact store"
    # the large payloads were on the shared volume, the small artifacts in the S3 bucket
    assert list((tmp_path / "pvc" / "s3" / "rainmerge").rglob("model.safetensors*"))


def _host_check_and_auth_are_on(port: int) -> None:
    import base64
    import urllib.error

    def status(host: str | None, auth: bool) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1")
        if host:
            req.add_header("Host", host)
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        try:
            return urllib.request.urlopen(req, timeout=60).status
        except urllib.error.HTTPError as e:
            return e.code

    assert status("mlflow.rainmerge.svc:5000", True) == 200  # the in-cluster name is allowed
    assert status("evil.example:5000", True) == 403  # DNS rebinding refused
    assert status(None, False) == 401  # no anonymous writes to the registry


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: loopback, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: loopback, user: {token: none}}]
contexts: [{name: loopback, context: {cluster: loopback, user: loopback, namespace: rainmerge}}]
current-context: loopback
"""
