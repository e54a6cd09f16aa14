"""Issue #13: the output never destroys what is not ours, one writer per output, crash hygiene, preflight
checks and one-line errors (exit 2) for every bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rainmerge.cli import main
from rainmerge.overrides import parse_sets
from rainmerge.errors import ConfigError, CorruptInputError, DiskSpaceError, NonFiniteError, OutputLockedError
from rainmerge.io.lazy import ModelSource
from rainmerge.io.lock import OutputLock, lock_path
from rainmerge.io.writer import AtomicDir, check_output_path

ROOT = Path(__file__).resolve().parents[1]
MERGED = "model.layers.1.mlp.down_proj.weight"  # a merged tensor (all modules, all layers by default)


def _args(trio, calib, out, *extra, method="task_arithmetic", **roles):
    r, i = calib
    paths = {**{k: str(v) for k, v in trio.items()}, **{k: str(v) for k, v in roles.items()}}
    return ["merge", "--base", paths["base"], "--instruct", paths["instruct"], "--reasoning", paths["reasoning"],
            "--reasoning-calibration", str(r), "--instruction-calibration", str(i), "--output", str(out),
            "--device", "cpu", "--method", method, "--quiet", "--set", "stage1.positions=tags", *extra]


def _cli(capsys, argv) -> tuple[int, str]:
    """Run the CLI; a traceback fails the test. Returns (exit code, the single error line or '')."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("rainmerge: error:")]
    assert "Traceback" not in err
    if rc == 0:
        assert not lines
        return rc, ""
    assert rc == 2 and len(lines) == 1, err
    if os.environ.get("RAINMERGE_FAULT_LOG"):  # collect the messages (for reviewing their wording)
        with open(os.environ["RAINMERGE_FAULT_LOG"], "a") as f:
            f.write(lines[0] + "\n")
    return rc, lines[0]


def _digest(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _no_temporaries(out: Path) -> None:
    assert not [p.name for p in out.parent.glob(f".{out.name}.*")]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------------------------
# 1. --overwrite replaces only what is ours, never an input


def test_provenance_file_name_matches_merge():
    from rainmerge import merge
    from rainmerge.io import writer

    assert writer.PROVENANCE_FILE == merge.PROVENANCE_FILE


def test_overwrite_keeps_a_user_folder(trio_factory, calib, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    rc, line = _cli(capsys, _args(trio_factory(), calib, out, "--overwrite"))
    assert rc == 2 and "not written by rainmerge" in line
    assert (out / "thesis.tex").read_text() == "years of work" and len(list(out.iterdir())) == 1
    _no_temporaries(out)


def test_overwrite_keeps_the_input_lrm(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    lrm = _copy(trio["reasoning"], tmp_path / "lrm")
    before = _digest(lrm)
    rc, line = _cli(capsys, _args(trio, calib, lrm, "--overwrite", reasoning=lrm))
    assert rc == 2 and str(lrm) in line
    assert _digest(lrm) == before
    # output inside the LRM folder: refused too (the open models are protected), the folder untouched
    rc, line = _cli(capsys, _args(trio, calib, lrm / "merged", reasoning=lrm))
    assert rc == 2 and "lies inside the reasoning model folder" in line
    assert _digest(lrm) == before


def test_an_lrm_that_is_an_earlier_merge_is_still_protected(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    first = tmp_path / "first"
    assert _cli(capsys, _args(trio, calib, first))[0] == 0
    before = _digest(first)
    # it carries our provenance, yet it is an input of this run: never replaced
    rc, line = _cli(capsys, _args(trio, calib, first, "--overwrite", reasoning=first))
    assert rc == 2 and "is the reasoning model folder" in line
    assert _digest(first) == before
    with pytest.raises(ConfigError, match="is the reasoning model"):
        check_output_path(first, True, {"reasoning model": first})


def test_protected_paths(tmp_path):
    cal = tmp_path / "data" / "cal.json"
    cal.parent.mkdir()
    cal.write_text("[]")
    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    for out, match in ((tmp_path / "data", "contains the calibration"), (cal, "is the calibration"),
                       (model, "is the base"), (model / "sub" / "o", "lies inside the base"),
                       (tmp_path / "models", "contains the base")):
        with pytest.raises(ConfigError, match=match):
            check_output_path(out, True, {"calibration": cal, "base": model})
    check_output_path(tmp_path / "elsewhere", False, [cal, model])  # fine
    with pytest.raises(ConfigError, match="lies inside the input"):  # plain paths work too
        check_output_path(model / "o", False, [model])
    # a symlink to an input is the input
    link = tmp_path / "link"
    link.symlink_to(model)
    with pytest.raises(ConfigError, match="is the base"):
        check_output_path(link, True, {"base": model})


def test_overwrite_replaces_an_earlier_merge_or_an_empty_folder(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    out = tmp_path / "o"
    assert _cli(capsys, _args(trio, calib, out))[0] == 0
    assert _cli(capsys, _args(trio, calib, out, "--overwrite"))[0] == 0
    assert (out / "rainmerge_provenance.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(capsys, _args(trio, calib, empty, "--overwrite"))[0] == 0
    _no_temporaries(out)
    assert not lock_path(out).exists()


def test_a_folder_that_appears_during_the_write_is_not_replaced(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(ConfigError, match="already exists"):
        with AtomicDir(out) as tmp:
            (tmp / "w").write_text("ours")
            out.mkdir()
            (out / "theirs").write_text("x")
    assert (out / "theirs").read_text() == "x" and not (out / "w").exists()
    _no_temporaries(out)


# ----------------------------------------------------------------------------------------------
# 2. one writer per output

_HOLD = textwrap.dedent("""
    import sys
    from rainmerge.io.lock import OutputLock
    with OutputLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_second_writer_fails_fast_while_the_first_holds_the_lock(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, line = _cli(capsys, _args(trio, calib, out))
        assert rc == 2 and "another rainmerge process is writing" in line and f"pid {holder.pid}" in line
        assert not out.exists()
        with pytest.raises(OutputLockedError):
            OutputLock(out).acquire()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert _cli(capsys, _args(trio, calib, out))[0] == 0  # once released: exactly one success


_RACER = textwrap.dedent("""
    import pathlib, sys, time
    import rainmerge.stages as st
    barrier, me = pathlib.Path(sys.argv[1]), sys.argv[2]
    Orig = st.OutputLock

    class Racing(Orig):  # both writers reach the lock together (the merge takes it before any work)
        def __init__(self, *a, **k):
            (barrier / me).touch()
            t0 = time.time()
            while len(list(barrier.iterdir())) < 2 and time.time() - t0 < 120:
                time.sleep(0.02)
            super().__init__(*a, **k)

        def __enter__(self):
            held = super().__enter__()
            time.sleep(1.5)  # hold it while the other one tries
            return held

    st.OutputLock = Racing
    from rainmerge.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def test_two_concurrent_merges_into_one_output(trio_factory, calib, tmp_path):
    trio = trio_factory()
    out = tmp_path / "o"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(barrier), str(k), *_args(trio, calib, out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for k in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert "Traceback" not in err
    assert "another rainmerge process is writing" in err or "already exists" in err
    assert (out / "rainmerge_provenance.json").is_file()
    _no_temporaries(out)


def test_lock_is_reentrant_in_process_and_released(tmp_path):
    out = tmp_path / "o"
    with OutputLock(out):
        assert lock_path(out).read_text().split()[0] == str(os.getpid())
        with AtomicDir(out) as tmp:
            (tmp / "f").write_text("x")
        assert (out / "f").is_file() and lock_path(out).exists()
    assert not lock_path(out).exists()


# ----------------------------------------------------------------------------------------------
# 3. temporaries of killed runs


def test_killed_run_temporaries_are_removed_and_reported(trio_factory, calib, tmp_path, capsys, caplog):
    out = tmp_path / "o"
    dead = _dead_pid()
    stale = tmp_path / f".o.tmp-{dead}-deadbeef"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 5000)
    live = tmp_path / f".o.tmp-{os.getppid()}-0badf00d"  # a live process: never touched
    live.mkdir()
    legacy = tmp_path / ".o.tmp-cafebabe"  # pre-pid name: reported, left alone
    legacy.mkdir()
    caplog.set_level("WARNING", logger="rainmerge")
    assert _cli(capsys, _args(trio_factory(), calib, out))[0] == 0
    assert not stale.exists() and live.is_dir() and legacy.is_dir()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("removed stale temporary" in m and stale.name in m and "4.9 KiB" in m for m in msgs), msgs
    assert any("leaving" in m and legacy.name in m for m in msgs), msgs


_KILLED = textwrap.dedent("""
    import sys, time
    import rainmerge.merge as m

    def stuck(out_dir, *a, **k):
        (out_dir / "model-00001-of-00002.safetensors").write_bytes(b"0" * 4096)
        print("writing", flush=True)
        time.sleep(600)

    m.write_sharded = stuck
    from rainmerge.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_real_kill_9_mid_write_is_cleaned_by_the_next_run(trio_factory, calib, tmp_path, capsys, caplog):
    trio = trio_factory()
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-c", _KILLED, *_args(trio, calib, out)], stdout=subprocess.PIPE,
                         text=True, cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == "writing"
        left = [x for x in tmp_path.glob(".o.tmp-*")]
        assert len(left) == 1 and f"tmp-{p.pid}-" in left[0].name
    finally:
        p.kill()
        p.wait(timeout=60)
    caplog.set_level("WARNING", logger="rainmerge")
    assert _cli(capsys, _args(trio, calib, out))[0] == 0
    assert not left[0].exists() and (out / "rainmerge_provenance.json").is_file()
    _no_temporaries(out)
    assert any("removed stale temporary" in r.getMessage() and left[0].name in r.getMessage()
               and "KiB" in r.getMessage() for r in caplog.records)


def test_killed_between_renames_restores_the_previous_output(tmp_path, caplog):
    out = tmp_path / "o"
    old = tmp_path / f".o.old-{_dead_pid()}-12345678"
    old.mkdir()
    (old / "rainmerge_provenance.json").write_text("{}")
    tmp = tmp_path / f".o.tmp-{_dead_pid()}-87654321"
    tmp.mkdir()
    caplog.set_level("WARNING", logger="rainmerge")
    with OutputLock(out) as lk:
        pass
    assert (out / "rainmerge_provenance.json").is_file() and not old.exists() and not tmp.exists()
    assert [p for p, _ in lk.cleaned] == [tmp]
    assert any("restored" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------------------------
# 4. preflight


def _sources(trio, **roles):
    from rainmerge.config import ModelRef

    paths = {**trio, **roles}
    return {r: ModelSource(ModelRef(path=str(paths[r])), r) for r in ("base", "instruct", "reasoning")}


def _names(src):
    return [n for n in src.names() if n.startswith("model.layers.") and n.endswith("proj.weight")]


def test_preflight_passes_on_good_inputs(trio_factory, tmp_path):
    from rainmerge.safety import preflight, scan_nonfinite

    srcs = _sources(trio_factory())
    names = _names(srcs["reasoning"])
    assert preflight(srcs, names, tmp_path / "o", protected={"calibration": tmp_path / "c.json"},
                     scan_finite=True) == []
    for role, s in srcs.items():
        scan_nonfinite(s, names, role)


def _truncate(folder: Path, name: str, keep: int) -> None:
    f = folder / name
    f.write_bytes(f.read_bytes()[:keep])


def test_truncated_shard_is_named_with_its_role(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    itm = _copy(trio["instruct"], tmp_path / "itm")
    size = (itm / "model.safetensors").stat().st_size
    _truncate(itm, "model.safetensors", size - 1000)
    out = tmp_path / "o"
    rc, line = _cli(capsys, _args(trio, calib, out, instruct=itm))
    assert rc == 2 and "instruct: shard model.safetensors is truncated or corrupt" in line
    assert not out.exists()


def test_corrupt_second_shard_of_a_sharded_model(trio_factory, tmp_path):
    from huggingface_hub import save_torch_state_dict

    from rainmerge.io.lazy import read_header
    from rainmerge.safety import check_shards

    trio = trio_factory()
    d = tmp_path / "lrm"
    d.mkdir()
    shutil.copy(trio["reasoning"] / "config.json", d)
    save_torch_state_dict(load_file(trio["reasoning"] / "model.safetensors"), d, max_shard_size="60KB")
    shards = sorted(d.glob("model-*.safetensors"))
    assert len(shards) >= 3
    src = ModelSource(_ref(d), "reasoning")
    check_shards(src)  # fine
    # header intact but data cut short (what a killed download leaves): the preflight names it
    _truncate(d, shards[1].name, shards[1].stat().st_size - 10)
    with pytest.raises(CorruptInputError, match=rf"reasoning: shard {shards[1].name} is truncated or corrupt"):
        check_shards(src)
    with pytest.raises(CorruptInputError, match=rf"reasoning: shard {shards[1].name} is truncated or corrupt"):
        ModelSource(_ref(d), "reasoning")
    _truncate(d, shards[1].name, 5)
    with pytest.raises(CorruptInputError, match="too small"):
        read_header(shards[1], "reasoning")
    shards[1].write_bytes(b"\xff" * 64)
    with pytest.raises(CorruptInputError, match=rf"reasoning: shard {shards[1].name}"):
        read_header(shards[1], "reasoning")


def _ref(path):
    from rainmerge.config import ModelRef

    return ModelRef(path=str(path))


def test_index_entry_outside_the_model_folder(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    d = _copy(trio["base"], tmp_path / "models" / "base")
    (d / "model.safetensors").rename(tmp_path / "models" / "outside.safetensors")
    sd = load_file(tmp_path / "models" / "outside.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "../outside.safetensors" for k in sd}}))
    rc, line = _cli(capsys, _args(trio, calib, tmp_path / "o", base=d))
    assert rc == 2 and "base: weight index" in line and "points outside the model folder" in line
    (d / "model.safetensors.index.json").write_text("{not json")
    rc, line = _cli(capsys, _args(trio, calib, tmp_path / "o", base=d))
    assert rc == 2 and "base: weight index" in line and "not valid JSON" in line


def test_config_json_not_json(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    d = _copy(trio["instruct"], tmp_path / "itm")
    (d / "config.json").write_text('{"model_type": "qwen2",\n  oops}')
    rc, line = _cli(capsys, _args(trio, calib, tmp_path / "o", instruct=d))
    assert rc == 2 and "instruct: config" in line and "config.json is not valid JSON" in line and "line 2" in line


@pytest.mark.parametrize("role", ["base", "instruct", "reasoning"])
def test_nan_or_inf_in_each_role(trio_factory, tmp_path, role):
    from rainmerge.safety import preflight, scan_nonfinite

    trio = trio_factory()
    d = _copy(trio[role], tmp_path / role)
    sd = load_file(d / "model.safetensors")
    sd[MERGED][3, 5] = float("nan") if role != "instruct" else float("inf")
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    srcs = _sources(trio, **{role: d})
    names = _names(srcs["reasoning"])
    kind = "1 NaN" if role != "instruct" else "1 Inf"
    with pytest.raises(NonFiniteError, match=rf"{role}: tensor {MERGED} in model.safetensors has .*{kind}"):
        scan_nonfinite(srcs[role], names, role)
    for r in srcs:
        if r != role:
            scan_nonfinite(srcs[r], names, r)
    with pytest.raises(NonFiniteError, match=role):
        preflight(srcs, names, tmp_path / "o2", scan_finite=True)


def test_lrm_scan_covers_tensors_the_forward_pass_reads(trio_factory, tmp_path):
    from rainmerge.safety import preflight

    trio = trio_factory()
    d = _copy(trio["reasoning"], tmp_path / "lrm")
    sd = load_file(d / "model.safetensors")
    sd["model.embed_tokens.weight"][0, 0] = float("inf")  # not a merged tensor
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    srcs = _sources(trio, reasoning=d)
    with pytest.raises(NonFiniteError, match="reasoning: tensor model.embed_tokens.weight"):
        preflight(srcs, _names(srcs["reasoning"]), tmp_path / "o", scan_finite=True)


def _poison(trio, role, dst):
    d = _copy(trio[role], dst)
    sd = load_file(d / "model.safetensors")
    sd[MERGED][3, 5] = float("nan")
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    return d


@pytest.mark.parametrize("role", ["base", "instruct", "reasoning"])
def test_nan_in_each_role_through_the_cli(trio_factory, calib, tmp_path, capsys, role):
    # no preflight wired yet: a one-line error at the first read of the tensor, no output left
    trio = trio_factory()
    d = _poison(trio, role, tmp_path / role)
    out = tmp_path / "o"
    rc, line = _cli(capsys, _args(trio, calib, out, **{role: d}))
    assert rc == 2 and f"{role}: tensor {MERGED}" in line and "NaN" in line
    assert not out.exists()
    _no_temporaries(out)


def test_dtype_mismatch_is_warned(trio_factory, tmp_path):
    from rainmerge.safety import preflight

    trio = trio_factory()
    d = _copy(trio["instruct"], tmp_path / "itm")
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(d / "model.safetensors").items()}
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    srcs = _sources(trio, instruct=d)
    names = _names(srcs["reasoning"])
    warnings = preflight(srcs, names, tmp_path / "o")
    assert len(warnings) == 1 and "instruct" in warnings[0] and "BF16" in warnings[0] and "F32" in warnings[0]


def test_preflight_refuses_output_overlapping_inputs(trio_factory, tmp_path):
    from rainmerge.safety import preflight

    trio = trio_factory()
    srcs = _sources(trio)
    names = _names(srcs["reasoning"])
    with pytest.raises(ConfigError, match="lies inside the instruct model folder"):
        preflight(srcs, names, trio["instruct"] / "out")
    cal = tmp_path / "cal" / "r.json"
    with pytest.raises(ConfigError, match="contains the reasoning calibration"):
        preflight(srcs, names, tmp_path / "cal", protected={"reasoning calibration": cal})


@pytest.fixture
def tiny_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_preflight_full_disk(trio_factory, tiny_disk):
    from rainmerge.safety import preflight

    trio = trio_factory()
    srcs = _sources(trio)
    names = _names(srcs["reasoning"])
    out = tiny_disk / "o"
    with pytest.raises(DiskSpaceError, match=r"not enough disk space: the merged model needs about .* free"):
        preflight(srcs, names, out)


def test_full_disk_is_refused_before_work_and_during_the_write(trio_factory, calib, tiny_disk, capsys,
                                                                monkeypatch):
    import rainmerge.safety

    trio = trio_factory()
    out = tiny_disk / "o"
    free = shutil.disk_usage(tiny_disk).free
    weights = sum(t.numel() * t.element_size() for t in load_file(trio["reasoning"] / "model.safetensors").values())
    (tiny_disk / "filler").write_bytes(b"\0" * max(0, free - weights // 2))
    rc, line = _cli(capsys, _args(trio, calib, out))
    assert rc == 2 and "not enough disk space" in line  # the CLI's preflight, before any forward pass
    # and should the disk fill after the check (another writer), the write fails cleanly too
    monkeypatch.setattr(rainmerge.safety, "check_disk_space", lambda *a, **k: 0)
    rc, line = _cli(capsys, _args(trio, calib, out))
    assert rc == 2 and "the disk became full while writing" in line
    assert not out.exists()
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]


# ----------------------------------------------------------------------------------------------
# 5. every remaining traceback is a one-line error


def test_yaml_syntax_error_names_file_line_column(trio_factory, calib, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("method: task_arithmetic\nstrength: 0.5\nlayers: [0, 1\noutput: o\n")
    rc, line = _cli(capsys, ["merge", "--config", str(cfg)])
    assert rc == 2 and str(cfg) in line and "YAML syntax error at line 4, column" in line
    cfg.write_bytes(b"method: ties\xff\xfe\n")
    rc, line = _cli(capsys, ["merge", "--config", str(cfg)])
    assert rc == 2 and "not UTF-8" in line


def test_invalid_values_are_one_line(trio_factory, calib, tmp_path, capsys):
    rc, line = _cli(capsys, _args(trio_factory(), calib, tmp_path / "o", "--set", "layers=[0,",
                                  "--set", "stage2.rho=x"))
    assert rc == 2 and "invalid configuration: layers:" in line and "stage2.rho:" in line


def test_non_utf8_calibration_file(trio_factory, calib, tmp_path, capsys):
    bad = tmp_path / "reasoning.json"
    bad.write_bytes(calib[0].read_bytes().replace(b"Compute 1 plus", b"Compute \xe9 plus"))
    out = tmp_path / "o"
    rc, line = _cli(capsys, _args(trio_factory(), (bad, calib[1]), out, method="rain"))
    assert rc == 2 and str(bad) in line and "not UTF-8" in line
    assert not out.exists()


def test_jsonl_error_reports_the_right_line(tmp_path):
    from rainmerge.calibration import load_instruction
    from tests.tiny import instruction_records

    rows = [json.dumps(r) for r in instruction_records(3)]
    bad = tmp_path / "i.jsonl"
    bad.write_text("\n".join(rows[:2] + ["", '{"id": 7, "prompt": '] + rows[2:]) + "\n")
    with pytest.raises(ConfigError, match=r"i.jsonl: line 4 is not valid JSON"):
        load_instruction(bad)


def test_set_keeps_digests_and_odd_numbers_as_text():
    sha = "1234567890" * 6 + "1234"
    assert parse_sets([f"reasoning_calibration.sha256={sha}"]) == {"reasoning_calibration.sha256": sha}
    got = parse_sets(["a=0123", "b=12", "c=0.5", "d=[0, 1]", "e=true", "f=0x10", "g=abc", "h=[1,", "i=" + "0" * 40])
    assert got == {"a": "0123", "b": 12, "c": 0.5, "d": [0, 1], "e": True, "f": "0x10", "g": "abc", "h": "[1,",
                   "i": "0" * 40}
    from rainmerge.config import load_config

    cfg = load_config(None, {"base": "a", "instruct": "b", "reasoning": "c", "output": "o", "method": "rain",
                             "stage2.enabled": False, "reasoning_calibration.url": "https://x/y.json",
                             **parse_sets([f"reasoning_calibration.sha256={sha}"])})
    assert cfg.reasoning_calibration.sha256 == sha
