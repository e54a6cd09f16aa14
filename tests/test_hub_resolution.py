"""Hub ids resolve offline from the HF cache to a commit sha, which is recorded."""

import shutil

import pytest

from rainmerge.config import ModelRef
from rainmerge.errors import ConfigError
from rainmerge.io.lazy import ModelSource

SHA = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(tmp_path, src):
    repo = tmp_path / "hub" / "models--acme--tiny-lrm"
    shutil.copytree(src, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return tmp_path / "hub"


def test_hub_id_resolves_to_commit(trio_factory, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(_fake_cache(tmp_path, trio_factory()["reasoning"])))
    src = ModelSource(ModelRef(path="acme/tiny-lrm", revision="main"), "reasoning")
    assert src.commit == SHA
    assert src.describe(with_hashes=False)["commit"] == SHA
    assert "model.layers.0.self_attn.q_proj.weight" in src.names()
    with pytest.raises(ConfigError, match="cannot fetch 'acme/other@main'"):
        ModelSource(ModelRef(path="acme/other"), "base")
