"""Runs that share a folder, output paths that cannot hold a run, and Ctrl-C."""

import json
import os
import socket

import pytest

from modeling_ccr.cli import INTERRUPTED_EXIT_CODE, main
from modeling_ccr.training import experiment
from modeling_ccr.training.run_folder import LOCK_FILE, RunFolderError, check_output_dir, run_lock


def test_a_second_training_into_a_locked_folder_fails_naming_the_holder(tmp_path):
    with run_lock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
        assert holder == {"pid": os.getpid(), "host": socket.gethostname()}
        busy = rf"in use by another training \(process {os.getpid()}"
        with pytest.raises(RunFolderError, match=busy), run_lock(tmp_path):
            pass
    assert not (tmp_path / LOCK_FILE).exists(), "the lock is released when the run ends"


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError), run_lock(tmp_path):
        raise RuntimeError("the run failed")
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "no longer runs" in capsys.readouterr().out


def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "model.txt"
    target.write_text("x")
    with pytest.raises(RunFolderError, match=r"run\.yaml: output_dir .*model\.txt is a file"):
        check_output_dir(target, "run.yaml")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_dir_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(RunFolderError, match="not writable"):
            check_output_dir(folder, "run.yaml")
    finally:
        folder.chmod(0o700)


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ccr ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_ccr_train_into_an_output_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "model.txt"
    target.write_text("x")
    err = one_line_error(["train", "demo", "--set", f"output_dir={target}"], capsys)
    assert f"output_dir {target} is a file, expected a folder" in err
    assert target.read_text() == "x"


def test_ccr_train_into_a_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    # Root may write anywhere, so the read-only folder is what os.access reports for it.
    folder = tmp_path / "ro"
    folder.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if path == folder else access(path, mode))
    err = one_line_error(["train", "demo", "--set", f"output_dir={folder}"], capsys)
    assert f"output_dir {folder} is not writable ({folder} is read-only)" in err
    assert list(folder.iterdir()) == []


def test_ctrl_c_during_training_is_one_line_with_the_resume_hint(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run_experiment", interrupted)
    code = main(["train", "demo", "--set", "output_dir=unused"])
    err = capsys.readouterr().err
    assert code == INTERRUPTED_EXIT_CODE
    assert err.count("\n") == 1 and "--resume" in err and "Traceback" not in err
