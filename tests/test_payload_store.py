"""Payload folders with a remote (s3://) artifact store: on the shared volume, or a clear stop."""

import pytest

from rainmerge.errors import RainMergeError
from rainmerge.product.artifacts import PAYLOAD_ROOT_ENV, DirRef, make_ref, payload_folder


def test_local_store_keeps_the_payload_beside_the_artifact(tmp_path):
    assert payload_folder(f"file://{tmp_path}/a") == tmp_path / "a" / "payload"
    assert payload_folder(str(tmp_path / "b")).is_dir()


def test_remote_store_maps_to_the_shared_volume(tmp_path, monkeypatch):
    monkeypatch.delenv(PAYLOAD_ROOT_ENV, raising=False)
    with pytest.raises(RainMergeError, match=PAYLOAD_ROOT_ENV):
        payload_folder("s3://bucket/zenml/merge/merged_model/123")
    monkeypatch.setenv(PAYLOAD_ROOT_ENV, str(tmp_path))
    p = payload_folder("s3://bucket/zenml/merge/merged_model/123")
    assert p == tmp_path / "s3" / "bucket" / "zenml" / "merge" / "merged_model" / "123" / "payload" and p.is_dir()
    (p / "w.bin").write_bytes(b"x")
    ref = make_ref("merged_model", p)
    assert ref.verify().path == p  # another pod mounting the same volume verifies the same digests
    (p / "w.bin").write_bytes(b"y")
    with pytest.raises(RainMergeError, match="changed"):
        ref.verify()


def test_a_ref_into_the_object_store_is_refused_with_the_reason():
    ref = DirRef(kind="features", uri="s3://bucket/x", files={"a": "0" * 64})
    with pytest.raises(RainMergeError, match="shared filesystem"):
        ref.verify()
