"""The test suite's own hygiene: a run must not fill the disk it runs on.

A full run writes several GB of models (one vgg16 file is 553 MB). pytest keeps
every ``tmp_path`` of the last three sessions by default, which filled CI's disk;
pyproject.toml keeps the folders of failed tests only.
"""

from pathlib import Path

_written: list[Path] = []


def test_a_passing_test_writes_into_its_tmp_path(tmp_path):
    model = tmp_path / "model.bin"
    model.write_bytes(b"\0" * 1024)
    _written.append(model)
    assert model.exists()


def test_the_folder_of_a_passing_test_is_gone_once_it_ends(request):
    # pytest runs a file's tests in order and --dist loadfile keeps them on one worker.
    assert _written, "test_a_passing_test_writes_into_its_tmp_path must run first"
    assert request.config.getini("tmp_path_retention_policy") == "failed"
    assert not _written[0].parent.exists()
