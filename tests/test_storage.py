"""trainable.storage: one resolution of storage paths, small files written whole."""
import pytest

from trainable import storage


def test_folder__writes_reads_and_reports_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = storage.Folder("results/exp")  # relative: made absolute, as trial processes run elsewhere
    assert folder.uri == f"{tmp_path}/results/exp" and not folder.exists()
    folder.write_text("a.json", "{}")
    assert folder.exists() and folder.exists("a.json") and folder.read_text("a.json") == "{}"
    folder.write_text("a.json", "[1]")
    assert folder.read_text("a.json") == "[1]"
    with pytest.raises(FileNotFoundError):
        folder.read_text("b.json")
    folder.delete("a.json")
    folder.delete("a.json")  # deleting what is gone is no error
    assert not folder.exists("a.json")
    assert not [p for p in (tmp_path / "results" / "exp").iterdir() if p.name.startswith(".tmp")]


def test_resolve__local_paths_and_uris():
    fs, root = storage.resolve("/x/y")
    assert type(fs).__name__ == "LocalFileSystem" and root == "/x/y"
    assert storage.absolute("s3://bucket/p") == "s3://bucket/p" and storage.is_remote("gs://b")
    fs, root = storage.resolve("file:///tmp/z")
    assert root == "/tmp/z"
