"""Dashboard screenshots for docs/screenshots (issue 14).

    python scripts/screenshots.py --run-toy            # fresh stores in a temp dir, toy pipeline, then shots
    python scripts/screenshots.py --model NAME         # shots of an existing store (MLFLOW_TRACKING_URI)

Starts `mlflow server` on 127.0.0.1 (a free port) over the tracking store, takes headless Chromium
screenshots of the experiment (classic view), the pipeline's parent run, the registered version and
the HTML lineage report, and writes PNGs under docs/screenshots/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser() -> str:
    for b in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(b):
            return shutil.which(b)
    sys.exit("no headless Chromium (apt-get install chromium)")


def shot(url: str, png: Path, size: str = "1440,1000", wait_ms: int = 20000) -> Path:
    subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", url],
                   check=True, capture_output=True, timeout=600)  # a loaded 2-core machine
    small(png)
    print(f"{png}  {png.stat().st_size // 1024} KB")
    return png


def small(png: Path, limit: int = 300_000) -> None:
    """Keep committed PNGs under ~300 KB (palette quantisation, then downscale)."""
    from PIL import Image

    if png.stat().st_size <= limit:
        return
    im = Image.open(png).convert("RGB").quantize(colors=128)
    im.save(png, optimize=True)
    while png.stat().st_size > limit:
        im = im.resize((im.width * 4 // 5, im.height * 4 // 5))
        im.save(png, optimize=True)


def run_toy(name: str) -> None:
    from pipelines.run import run_pipeline
    from rainmerge.product.pipeline_config import load_pipeline_config

    cfg = load_pipeline_config(str(ROOT / "configs" / "toy.yaml"), {
        "evaluation.limit": 40, "evaluation.device": "cpu", "device": "cpu",  # the shipped toy settings
        "tracking.registered_model": name, "tracking.zenml_model": name})
    print("decision:", run_pipeline(cfg))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-toy", action="store_true", help="fresh stores + one toy pipeline run first")
    ap.add_argument("--model", default="rainmerge-toy")
    ap.add_argument("--version", default=None, help="default: the latest version")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    ap.add_argument("--only", default="1,2,3,4", help="which shots, e.g. 3,4 (version page and report)")
    args = ap.parse_args()
    if args.run_toy:
        stores = Path(tempfile.mkdtemp(prefix="rainmerge-shots-"))
        os.environ["ZENML_CONFIG_PATH"] = str(stores / "zenml")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{stores / 'mlflow' / 'mlflow.db'}"
        run_toy(args.model)
    from mlflow import MlflowClient

    from rainmerge.product import describe, registry
    from rainmerge.product.tracking import tracking_uri

    uri = tracking_uri()
    c = registry._client(uri)
    version = args.version or str(max(int(v.version) for v in c.search_model_versions(f"name='{args.model}'")))
    mv = c.get_model_version(args.model, version)
    work = Path(tempfile.mkdtemp(prefix="rainmerge-report-"))
    if not mv.description or not mv.description.startswith("**RAIN"):  # promote not yet wired: backfill
        t = mv.tags
        describe.set_version_description(args.model, version, dict(t), registry.tag_metrics(t),
                                         registry.tag_metrics(t, "lrm_metric."), None, uri, out=work)
    else:
        from rainmerge.product.html_report import write_and_log_report

        write_and_log_report(args.model, version, work, uri)
    report = next(work.glob("lineage_*.html"))
    run = MlflowClient().get_run(mv.run_id)
    exp_id, parent = run.info.experiment_id, run.data.tags.get("mlflow.parentRunId") or mv.run_id

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    db = uri.removeprefix("sqlite:///")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", uri, "--default-artifact-root",
                               (Path(db).parent / "artifacts").as_uri(), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(1)
        # a fresh browser profile defaults the UI's GenAI/Model-training toggle to GenAI (localStorage);
        # workflowType=machine_learning is what a user's toggle stores; the experiment's own
        # mlflow.experimentKind=custom_model_development tag picks the classic tabs (Runs) inside it
        ml = "workflowType=machine_learning"
        only = set(args.only.split(","))
        shots = {"1": (f"{base}/#/experiments/{exp_id}/runs?{ml}", "1_experiment_classic_view.png", "1440,1000"),
                 "2": (f"{base}/#/experiments/{exp_id}/runs/{parent}?{ml}", "2_parent_run_overview.png", "1440,1800"),
                 "3": (f"{base}/#/models/{args.model}/versions/{version}?{ml}", "3_registered_version.png",
                       "1440,2600"),
                 "4": (report.as_uri(), "4_lineage_report.png", "1280,3400")}
        for k, (url, png, size) in shots.items():
            if k in only:
                shot(url, out / png, size, 3000 if k == "4" else 20000)
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
