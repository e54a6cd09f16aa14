"""Dashboards (issue 14): MLflow classic view, parent-run story, version descriptions, HTML lineage report."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.paired import evaluation, stored

DATA = Path(__file__).resolve().parents[1] / "assets" / "toy" / "data"
# metrics as a registered version stores them: scores plus the paired intervals' ci.* values
M, L = stored(evaluation(0.8, 0.9) | {"if_prompt_strict": 0.7}, evaluation(0.5, 0.92) | {"if_prompt_strict": 0.4})


def _browser() -> str | None:
    for b in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(b):
            return shutil.which(b)
    return None


def test_experiment_is_model_training_and_parent_run_tells_the_story(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from rainmerge.product import tracking

    with tracking.step_run("evaluate_merged", experiment_name="dash-exp") as child:
        found = tracking.log_eval_datasets(DATA)
        tracking.log_parent_summary(M, L, {"promote": True, "version": "3", "reasons": ["PASS x"]},
                                    params={"method": "rain"}, data_dir=DATA)
        parent = tracking.parent_run_id()
    exp = mlflow.get_experiment_by_name("dash-exp")
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    run = MlflowClient().get_run(parent)
    assert run.data.metrics["merged.if_inst_strict"] == 0.8 and run.data.metrics["lrm.if_inst_strict"] == 0.5
    note = run.data.tags["mlflow.note.content"]
    assert "PROMOTED" in note and "| if_inst_strict | 0.8000 | 0.5000 | +0.3000 |" in note
    assert found and "eval_instructions" in found
    digests = {d.dataset.digest for d in run.inputs.dataset_inputs}
    assert found["eval_instructions"]["sha256"][:36] in digests
    step = MlflowClient().get_run(child.info.run_id)
    assert {d.dataset.name for d in step.inputs.dataset_inputs} >= set(found)


def test_plots_have_integer_layer_ticks_and_titles(tmp_path):
    from rainmerge.product import plots

    p = plots.alpha_heatmap([[0.1, 0.5, 0.9]] * 3, [0, 5, 9], tmp_path / "a.png")
    q = plots.projection_plot({f"model.layers.{i}.mlp.up_proj": {"kept_norm": 0.5, "residual": 1e-3}
                               for i in range(3)}, tmp_path / "p.png")
    assert p.stat().st_size > 1000 and q.stat().st_size > 1000


def _register(name: str, tmp_path: Path) -> tuple[str, dict]:
    """A registered version shaped like the pipeline's: parent run + step runs, lineage tags, decision."""
    from rainmerge.product import registry, tracking
    from rainmerge.product.plots import alpha_heatmap

    tags = {"method": "rain", "git_commit": "abc123", "weights_uri": str(tmp_path), "config_sha256": "c" * 64,
            "zenml.run_id": "z-1", "zenml.run_name": "run-1", "zenml.pipeline": "rain_merge_pipeline",
            "input.base": "assets/toy/base", "input.base.revision": "None", "input.base.commit": "None",
            "input.base.config_sha256": "b" * 64, "input.base.weights_sha256": "d" * 64,
            "input.reasoning": "Qwen/QwQ", "input.reasoning.revision": "main", "input.reasoning.commit": "f" * 40,
            "input.reasoning.config_sha256": "e" * 64, "calibration.reasoning": "1" * 64,
            "calibration.instruction": "2" * 64}
    tags |= {f"metric.{k}": str(v) for k, v in M.items()} | {f"lrm_metric.{k}": str(v) for k, v in L.items()}
    with tracking.step_run("score_attention_heads", experiment_name=f"exp-{name}"):
        import mlflow

        mlflow.log_artifact(str(alpha_heatmap([[0.2, 0.8]] * 2, [0, 1], tmp_path / "alpha_heatmap.png")))
    with tracking.step_run("promote", experiment_name=f"exp-{name}"):
        version = registry.register(name, str(tmp_path), tracking.parent_run_id(), tags)
        d = registry.decide(M, L, None, registry.PromotionGates())
        d.version = version
        registry.record_decision(name, version, d)
    return version, tags | {"_decision": d}


def test_version_description_and_clean_tags(tmp_path):
    from mlflow import MlflowClient

    from rainmerge.product import describe

    assert describe.clean_tags({"a": None, "b": "None", "c": 1, "d": ""}) == {"c": "1"}
    version, tags = _register("dash-desc", tmp_path)
    d = tags.pop("_decision")
    md = describe.set_version_description("dash-desc", version, tags, M, L, d, config={"method": "rain",
                                          "strength": 1.0, "stage1": {"positions": "tags"}})
    mv = MlflowClient().get_model_version("dash-desc", version)
    assert mv.description == md
    assert "local folder `assets/toy/base`" in md and "commit `" + "f" * 40 in md and "1" * 64 in md
    assert "| if_inst_strict | 0.8000 | 0.5000 |" in md and "Gate verdict" in md and "abc123" in md
    assert "None" not in md and "None" not in mv.tags.values()
    meta = describe.zenml_metadata("dash-desc", version)
    assert meta["description"] == md and meta["git_commit"] == "abc123"


def _screenshot(html: Path, png: Path, browser: str) -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=1200,1600", html.as_uri()],
                   check=True, capture_output=True, timeout=120)


def test_html_report_is_self_contained_and_renders_in_chromium(tmp_path):
    from mlflow import MlflowClient

    from rainmerge.product import html_report as report

    version, tags = _register("dash-html", tmp_path)
    path = report.write_and_log_report("dash-html", version, tmp_path / "out")
    text = path.read_text()
    for digest in ("1" * 64, "2" * 64, "c" * 64, "d" * 64, "f" * 40):
        assert digest in text
    assert "<svg" in text and "data:image/png;base64," in text and "<link" not in text and "src='http" not in text
    assert "score_attention_heads" in text and "promote" in text
    mv = MlflowClient().get_model_version("dash-html", version)
    assert mv.tags["lineage_report"].endswith(path.name)
    browser = _browser()
    if browser is None:
        pytest.skip("no headless Chromium installed (apt-get install chromium)")
    png = tmp_path / "report.png"
    _screenshot(path, png, browser)
    assert png.is_file() and png.stat().st_size > 5000
    from PIL import Image

    im = Image.open(png).convert("L")
    lo, hi = im.getextrema()
    assert hi - lo > 100, "blank screenshot"
    assert len(set(im.resize((120, 160)).getdata())) > 10
