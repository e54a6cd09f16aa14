"""Evaluation of a model larger than one GPU: the engine's placement (one device, a device map over the GPUs,
a tensor-parallel server), checked before anything loads, and the one loader passing it through."""

import contextlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from rainmerge.errors import ConfigError  # noqa: E402
from rainmerge.eval.engines import EngineConfig  # noqa: E402
from rainmerge.loading import Placement, load_causal_lm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LRM = str(ROOT / "assets" / "toy" / "reasoning")


@pytest.mark.parametrize("fields, match", [
    ({"kind": "inprocess", "gpu_memory": ["40GiB", "40GiB"]}, "one GPU"),
    ({"kind": "endpoint", "url": "http://x", "device_map": "auto"}, "server places its own"),
    ({"kind": "padded", "tensor_parallel_size": 2}, "endpoint server's"),
    ({"kind": "padded", "gpu_memory": ["lots"]}, "not a size"),
    ({"kind": "endpoint", "tensor_parallel_size": 2, "command": ["vllm", "serve", "{model}", "--tensor-parallel-size", "4"]},
     "shards over 4 GPUs"),
    ({"kind": "endpoint", "command": ["vllm", "serve", "{model}", "-tp=2"]}, "shards over 2 GPUs"),
])
def test_engine_placement_is_validated(fields, match):
    with pytest.raises(ValidationError, match=match):
        EngineConfig(**fields)


def test_engine_gpus_follow_the_placement():
    cmd = ["vllm", "serve", "{model}", "--tensor-parallel-size", "{tensor_parallel_size}"]
    assert EngineConfig(kind="endpoint", command=cmd, tensor_parallel_size=4).gpus == 4
    assert EngineConfig(kind="padded", gpu_memory=["70GiB"] * 3).gpus == 3
    assert EngineConfig().gpus == 1 and not EngineConfig().spread


@pytest.fixture
def two_gpus(monkeypatch):
    """Two 80 GB GPUs faked (40 GB free each); any real from_pretrained call is recorded."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (40 << 30, 80 << 30))
    from transformers import AutoModelForCausalLM

    calls, real = [], AutoModelForCausalLM.from_pretrained

    def spy(path, **kw):
        calls.append(kw)
        model = real(path, dtype=torch.float32)  # what accelerate would have dispatched over the two GPUs
        model.hf_device_map = {"model.embed_tokens": 0, "model.layers": 1, "lm_head": 1}
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    return calls


def test_device_map_goes_straight_to_the_gpus(two_gpus):
    """padded + gpu_memory: one from_pretrained with accelerate's map over both GPUs, nothing on the host
    (cpu 0), the configured dtype, no remote code; the spread model is not moved afterwards."""
    from rainmerge.eval.engines.hf import load

    cfg = EngineConfig(kind="padded", gpu_memory=["40GiB", "40GiB"], dtype="bfloat16")
    model, _ = load(LRM, "cuda", cfg=cfg, kv_tokens=256)
    assert len(two_gpus) == 1
    kw = two_gpus[0]
    assert kw["device_map"] == "auto" and kw["max_memory"] == {0: "40GiB", 1: "40GiB", "cpu": 0}
    assert kw["dtype"] == torch.bfloat16 and kw["trust_remote_code"] is False
    assert next(model.parameters()).device.type == "cpu"  # the spy's model: no .to(device) after the map


def test_one_gpu_load_names_the_device(two_gpus):
    """No device map asked: the whole model goes to the one device through from_pretrained's device_map
    (no host build then copy); trust_remote_code only because the config asks."""
    from rainmerge.eval.engines.hf import placement

    assert placement(EngineConfig(), "cuda") == Placement("cuda")
    with pytest.raises(ConfigError, match="inprocess runs on one GPU"):
        placement(EngineConfig(kind="inprocess", device_map="auto"), "cuda")  # two visible
    model = load_causal_lm(LRM, torch.bfloat16, Placement("cpu"), trust_remote_code=True)
    assert two_gpus[-1]["device_map"] is None and two_gpus[-1]["trust_remote_code"] is True
    assert model is not None
    with contextlib.suppress(RuntimeError, AssertionError):  # .to("cuda") of the spy's model fails without a GPU
        load_causal_lm(LRM, torch.bfloat16, Placement("cuda"))
    assert len(two_gpus) == 2 and two_gpus[-1]["device_map"] == "cuda"


def test_fit_check_errors_before_any_load(two_gpus):
    """Weights from the shard headers + the KV cache over the budgets: too small is a ConfigError naming
    the figures, and from_pretrained is never called."""
    from rainmerge.eval.engines.hf import load

    cfg = EngineConfig(kind="padded", gpu_memory=["4MB", "4MB"], max_concurrency=4)
    with pytest.raises(ConfigError, match=r"needs .* GB \(weights .* \+ KV cache .*\); 2 GPU\(s\) offer"):
        load(LRM, "cuda", cfg=cfg, kv_tokens=4096)
    assert two_gpus == []
    # the same model fits budgets that hold it: then (and only then) it loads
    load(LRM, "cuda", cfg=cfg.model_copy(update={"gpu_memory": ["1GB", "1GB"]}), kv_tokens=4096)
    assert len(two_gpus) == 1


def test_real_device_map_on_cpu_equals_the_plain_load_and_never_offloads():
    """accelerate for real (CPU only here): a device map within budget gives the plain load's logits; a
    budget too small for the model puts layers on disk, which the loader refuses."""
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    spread = load_causal_lm(LRM, torch.float32, Placement("cpu", "auto", {"cpu": "4GB"}))
    plain = load_causal_lm(LRM, torch.float32, Placement("cpu"))
    assert torch.equal(spread(ids).logits, plain(ids).logits)
    with pytest.raises(ConfigError, match="puts layers on disk"):
        load_causal_lm(LRM, torch.float32, Placement("cpu", "auto", {"cpu": "1MB"}))


def test_tensor_parallel_larger_than_the_pod_fails_before_the_server_starts(tmp_path):
    from rainmerge.eval.engines.endpoint import EndpointEngine, EndpointError, check_tensor_parallel

    check_tensor_parallel(4, visible=4)
    with pytest.raises(EndpointError, match="tensor_parallel_size 4 but 2 GPU"):
        check_tensor_parallel(4, visible=2)
    marker = tmp_path / "started"
    cfg = EngineConfig(kind="endpoint", tensor_parallel_size=2, startup_timeout_s=5,
                       command=["touch", str(marker), "{tensor_parallel_size}"])
    if torch.cuda.device_count() < 2:
        with pytest.raises(EndpointError, match="GPU"):
            EndpointEngine(cfg, LRM)
        assert not marker.exists()


def _placement(config, **overrides):
    from rainmerge.preflight.eval_placement import placement_from_config

    arch = {"num_layers": 80, "num_heads": 64, "num_kv_heads": 8, "head_dim": 128}  # Llama-3 70B
    return placement_from_config(ROOT / config, overrides, arch, 70_553_706_496)


def test_plan_places_the_70b_evaluation():
    """The shipped 70B config: a vLLM server over 4 GPUs, a quarter of the bf16 weights per GPU; in process
    on one 80 GB GPU it does not fit; a tensor-parallel size the 64 heads cannot split is a problem."""
    p = _placement("configs/llama3-70b.yaml")
    assert p.engine == "endpoint" and p.gpus == 4 and p.fits
    assert p.weights_bytes == 2 * 70_553_706_496 and p.per_gpu_bytes == p.weights_bytes // 4
    three = _placement("configs/llama3-70b.yaml", **{"evaluation.engine.tensor_parallel_size": 3,
                                                     "evaluation.engine.command": ["vllm", "serve", "{model}"]})
    assert not three.fits and any("does not divide the 64" in x for x in three.problems)
    inproc = _placement("configs/llama3-70b.yaml", **{"evaluation.engine": {"kind": "inprocess"}})
    assert inproc.gpus == 1 and not inproc.fits and inproc.per_gpu_bytes > 80e9


def test_suite_fit_check_runs_before_generation(two_gpus, tmp_path):
    """evaluate_benchmarks on 'cuda' sizes the KV cache from the rendered prompts and the budget, and stops
    before any model load or record when the GPUs cannot hold it."""
    from rainmerge.eval.benchmarks import embedded_specs, load_benchmark
    from rainmerge.eval.suite import evaluate_benchmarks

    spec = embedded_specs(ROOT / "assets" / "toy" / "data")[0].model_copy(update={"limit": 4})
    cfg = EngineConfig(kind="padded", gpu_memory=["4MB", "4MB"])
    with pytest.raises(ConfigError, match="KV cache"):
        evaluate_benchmarks(LRM, [load_benchmark(spec)], tmp_path / "r.jsonl", engine=cfg, device="cuda",
                            progress=False)
    assert two_gpus == [] and not (tmp_path / "r.jsonl").exists()


def test_named_dtype_enters_the_evaluation_cache_key():
    from rainmerge.product.pipeline_config import EvaluationConfig
    from rainmerge.product.evaldata import settings

    auto = settings(EvaluationConfig())
    assert "dtype" not in auto  # keys made before the setting existed stay valid
    assert settings(EvaluationConfig(engine=EngineConfig(dtype="float16")))["dtype"] == "float16"
