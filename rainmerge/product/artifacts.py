"""Intermediate artifacts passed between pipeline steps by reference: a folder plus a sha256 manifest.

Tensors go to safetensors, everything else to JSON; nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from ..calibration import InstructionSample, InstructionSpans, ReasoningSample
from ..config import ModelRef, ModelsSpec
from ..errors import RainMergeError
from ..io.lazy import sha256_file
from ..projection import Basis


class DirRef(BaseModel):
    """A folder in the artifact store, identified by the digests of its files."""

    kind: str
    uri: str
    files: dict[str, str]
    meta: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        if is_remote(self.uri):
            raise RainMergeError(f"{self.kind} artifact at {self.uri}: payloads live on a shared filesystem "
                                 f"(the PVC), not in the object store; see k8s/README.md")
        return Path(self.uri.removeprefix("file://"))

    def verify(self) -> "DirRef":
        for rel, digest in self.files.items():
            f = self.path / rel
            if not f.is_file() or sha256_file(f) != digest:
                raise RainMergeError(
                    f"{self.kind} artifact at {self.uri}: {rel} is missing or changed since its step wrote it (a "
                    "cached step output is reused by every rerun); rerun without the cache: rainmerge run --no-cache")
        return self


class ModelInput(BaseModel):
    """One model of the trio as the load step resolved it (io.lazy.ModelSource.describe, and
    trust_remote_code): what later steps reopen, and what provenance, tags and the Hub card name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    role: str
    path: str  # as configured: a local folder or a Hub id
    revision: str | None = None
    commit: str | None = None  # the resolved Hub commit; None for a local folder
    resolved_dir: str  # the pinned snapshot folder
    model_type: str | None = None
    config_sha256: str
    weights_sha256: dict[str, str] | None = None  # per weight file; None when the run does not hash inputs
    trust_remote_code: bool = False

    def record(self) -> dict[str, Any]:
        """The description as describe() writes it (no weights_sha256 key when not hashed)."""
        d = self.model_dump(mode="json")
        if d["weights_sha256"] is None:
            del d["weights_sha256"]
        return d


class LoadedModels(BaseModel):
    """The load step's output (artifact `models`), read by every later step: the trio as resolved,
    its architecture, the merged layers and modules, the load warnings and the overlap diagnostic."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    inputs: dict[str, ModelInput]  # by role: base, instruct, reasoning
    arch: dict[str, int | str]  # arch.ArchSpec.dims() and model_type
    layers: list[int]
    modules: list[str]
    warnings: list[str] = []
    overlap: dict[str, Any] | None = None  # diagnostics.overlap's summary, when it ran

    def spec(self) -> ModelsSpec:
        """Reopen the trio exactly as resolved (pinned snapshot folders, no re-hashing)."""
        refs = {r: ModelRef(path=d.resolved_dir, trust_remote_code=d.trust_remote_code) for r, d in self.inputs.items()}
        return ModelsSpec(**refs, layers=self.layers, modules=self.modules, hash_inputs=False)

    def input_records(self) -> dict[str, dict[str, Any]]:
        """The inputs as plain records (provenance, the Hub card)."""
        return {r: d.record() for r, d in self.inputs.items()}

    def record(self) -> dict[str, Any]:
        """As logged to the load step's run (models.json)."""
        out = {"inputs": self.input_records(), "arch": self.arch, "layers": self.layers, "modules": self.modules,
               "warnings": self.warnings}
        return out | ({"overlap": self.overlap} if self.overlap is not None else {})


# Large payloads (weights, features, bases) stay on a POSIX filesystem shared by every step pod (the
# `rainmerge-data` PVC): the streaming writer and safetensors' mmap need files, and copying multi-GB
# folders through an object store at every hand-off would double the traffic. Small step outputs (refs,
# metrics) go to whatever artifact store the orchestrator has (s3:// included).
PAYLOAD_ROOT_ENV = "RAINMERGE_PAYLOAD_ROOT"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def payload_folder(artifact_uri: str) -> Path:
    """The payload folder of a step output: beside the artifact on a local store; under
    $RAINMERGE_PAYLOAD_ROOT/<scheme>/<bucket>/<key> (the shared PVC) when the store is remote."""
    if not is_remote(artifact_uri):
        p = Path(artifact_uri.removeprefix("file://")) / "payload"
    else:
        root = os.environ.get(PAYLOAD_ROOT_ENV)
        if not root:
            raise RainMergeError(f"the artifact store is remote ({artifact_uri.split('://')[0]}://): set "
                                 f"{PAYLOAD_ROOT_ENV} to a folder on the shared volume every step pod mounts "
                                 f"(k8s: /data/payload on the rainmerge-data PVC)")
        scheme, rest = artifact_uri.split("://", 1)
        p = Path(root) / scheme / rest.strip("/") / "payload"
    p.mkdir(parents=True, exist_ok=True)
    return p


def make_ref(kind: str, folder: str | Path, meta: dict[str, Any] | None = None) -> DirRef:
    folder = Path(folder)
    files = {str(f.relative_to(folder)): sha256_file(f) for f in sorted(folder.rglob("*")) if f.is_file()}
    return DirRef(kind=kind, uri=str(folder.resolve()), files=files, meta=meta or {})


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
    tmp.rename(path)


# -- calibration samples ------------------------------------------------------------------------

def save_samples(folder: Path, reasoning: list[ReasoningSample], instruction: list[InstructionSample]) -> None:
    write_json(folder / "reasoning_samples.json", [s.__dict__ for s in reasoning])
    write_json(folder / "instruction_samples.json",
               [{**s.__dict__, "spans": [sp.__dict__ for sp in s.spans]} for s in instruction])


def load_samples(folder: Path) -> tuple[list[ReasoningSample], list[InstructionSample]]:
    r = [ReasoningSample(**d) for d in json.loads((folder / "reasoning_samples.json").read_text())]
    i = []
    for d in json.loads((folder / "instruction_samples.json").read_text()):
        d["spans"] = [InstructionSpans(**sp) for sp in d["spans"]]
        i.append(InstructionSample(**d))
    return r, i


# -- Stage 1 features and projector bases -------------------------------------------------------

def save_features(folder: Path, feats: dict[int, dict[str, torch.Tensor]]) -> None:
    for layer, groups in feats.items():
        save_file({g: x.contiguous() for g, x in groups.items()}, str(folder / f"layer_{layer:03d}.safetensors"))


class FeatureFiles(Mapping):
    """Layer -> its feature groups, read from the layer's file when asked: `pop(layer)` (what
    stages.stage1_projectors(consume=True) calls) holds one layer in memory at a time, not all."""

    def __init__(self, files: dict[int, Path]):
        self.files = dict(files)

    def __getitem__(self, layer: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.files[layer]))

    def __iter__(self) -> Iterator[int]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def pop(self, layer: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.files.pop(layer)))


def load_features(folder: Path) -> FeatureFiles:
    return FeatureFiles({int(f.stem.split("_")[1]): f for f in sorted(folder.glob("layer_*.safetensors"))})


def save_bases(folder: Path, bases: dict[int, dict[str, Basis]]) -> None:
    meta: dict[str, Any] = {}
    for layer, groups in bases.items():
        tensors = {}
        for name, b in groups.items():
            tensors[f"{name}.V"] = b.V.contiguous()
            tensors[f"{name}.s"] = b.s.contiguous()
            meta[f"{layer}/{name}"] = {f.name: getattr(b, f.name) for f in dataclasses.fields(b)
                                       if not isinstance(getattr(b, f.name), torch.Tensor)}
        save_file(tensors, str(folder / f"layer_{layer:03d}.safetensors"))
    write_json(folder / "bases.json", meta)


class LayerBases(Mapping[int, dict[str, Basis]]):
    """Projector bases read from their artifact folder a layer at a time, when that layer is asked for.
    The probe merge (Stage 2) and the merge (Stage 3) take the merged layers in order and keep one layer's
    bases at a time, so the host holds one layer's (~0.4 GB at 70B) instead of every layer's (~31 GB)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "bases.json").read_text())
        self.files = {int(f.stem.split("_")[1]): f for f in sorted(self.folder.glob("layer_*.safetensors"))}

    def __getitem__(self, layer: int) -> dict[str, Basis]:
        t = load_file(str(self.files[layer]))
        names = {k.rsplit(".", 1)[0] for k in t}
        return {n: Basis(t[f"{n}.V"], t[f"{n}.s"], **self.meta[f"{layer}/{n}"]) for n in names}

    def __iter__(self) -> Iterator[int]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def load_bases(folder: Path) -> LayerBases:
    return LayerBases(folder)


# -- Stage 2 coefficients -------------------------------------------------------------------------

def save_coefficients(folder: Path, coeffs: dict[int, dict[str, torch.Tensor]], detail: dict[str, Any]) -> None:
    write_json(folder / "coefficients.json",
               {str(l): {m: c.tolist() for m, c in mods.items()} for l, mods in coeffs.items()})
    write_json(folder / "rain_alpha.json", detail)


def load_coefficients(folder: Path) -> dict[int, dict[str, torch.Tensor]]:
    raw = json.loads((folder / "coefficients.json").read_text())
    return {int(l): {m: torch.tensor(v, dtype=torch.float64) for m, v in mods.items()} for l, mods in raw.items()}
