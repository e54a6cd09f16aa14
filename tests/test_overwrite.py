"""Issue #13: --overwrite replaces only what is ours (an earlier rainmerge output or an empty folder),
never a user folder or an input model."""

from __future__ import annotations

import pytest

from rainmerge.errors import ConfigError
from rainmerge.io.lock import lock_path
from rainmerge.io.writer import AtomicDir, check_output_path

from .merge_cli import copy_model, digest, merge_args, no_temporaries, run_cli


def test_provenance_file_name_matches_merge():
    from rainmerge import merge
    from rainmerge.io import writer

    assert writer.PROVENANCE_FILE == merge.PROVENANCE_FILE


def test_overwrite_keeps_a_user_folder(trio_factory, calib, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    rc, line = run_cli(capsys, merge_args(trio_factory(), calib, out, "--overwrite"))
    assert rc == 2 and "not written by rainmerge" in line
    assert (out / "thesis.tex").read_text() == "years of work" and len(list(out.iterdir())) == 1
    no_temporaries(out)


def test_overwrite_keeps_the_input_lrm(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    lrm = copy_model(trio["reasoning"], tmp_path / "lrm")
    before = digest(lrm)
    rc, line = run_cli(capsys, merge_args(trio, calib, lrm, "--overwrite", reasoning=lrm))
    assert rc == 2 and str(lrm) in line
    assert digest(lrm) == before
    # output inside the LRM folder: refused too (the open models are protected), the folder untouched
    rc, line = run_cli(capsys, merge_args(trio, calib, lrm / "merged", reasoning=lrm))
    assert rc == 2 and "lies inside the reasoning model folder" in line
    assert digest(lrm) == before


def test_an_lrm_that_is_an_earlier_merge_is_still_protected(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    first = tmp_path / "first"
    assert run_cli(capsys, merge_args(trio, calib, first))[0] == 0
    before = digest(first)
    # it carries our provenance, yet it is an input of this run: never replaced
    rc, line = run_cli(capsys, merge_args(trio, calib, first, "--overwrite", reasoning=first))
    assert rc == 2 and "is the reasoning model folder" in line
    assert digest(first) == before
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
    assert run_cli(capsys, merge_args(trio, calib, out))[0] == 0
    assert run_cli(capsys, merge_args(trio, calib, out, "--overwrite"))[0] == 0
    assert (out / "rainmerge_provenance.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(capsys, merge_args(trio, calib, empty, "--overwrite"))[0] == 0
    no_temporaries(out)
    assert not lock_path(out).exists()


def test_a_folder_that_appears_during_the_write_is_not_replaced(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(ConfigError, match="already exists"):
        with AtomicDir(out) as tmp:
            (tmp / "w").write_text("ours")
            out.mkdir()
            (out / "theirs").write_text("x")
    assert (out / "theirs").read_text() == "x" and not (out / "w").exists()
    no_temporaries(out)
