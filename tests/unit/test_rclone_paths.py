"""How a path is split for the daemon's calls: the remote's root (one backend, one folder cache for every
call to that remote) and the path below it, quoting of connection strings included."""

from __future__ import annotations

import pytest

from colab_magics.rclone.process import split_root, with_option


@pytest.mark.parametrize(
    "path, root, rest",
    [
        ("gdrive:a/b", "gdrive:", "a/b"),
        ("gdrive:", "gdrive:", ""),
        ("gdrive:a/b/", "gdrive:", "a/b"),
        ("/x/y", "/", "x/y"),
        ("/", "/", ""),
        ("s3,region=eu:bucket/k", "s3,region=eu:", "bucket/k"),
        (":webdav,url='http://h:1/dav':x/y", ":webdav,url='http://h:1/dav':", "x/y"),
        (':webdav,url="http://h:1/a""b":x', ':webdav,url="http://h:1/a""b":', "x"),  # a doubled quote stays inside
        ("sftp:/home/u", "sftp:/", "home/u"),  # an absolute path on the server
        (":local:", ":local:", ""),
        ("my remote:data", "my remote:", "data"),
    ],
)
def test_split_root(path, root, rest):
    assert split_root(path) == (root, rest)


def test_a_relative_local_path_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert split_root("sub/x") == ("/", f"{str(tmp_path).lstrip('/')}/sub/x")


@pytest.mark.parametrize(
    "path, shown",
    [
        ("gdrive:a/b", "gdrive,use_trash=false:a/b"),
        (":drive,scope=drive:a", ":drive,scope=drive,use_trash=false:a"),
        ("gdrive:/a", "gdrive,use_trash=false:/a"),
        ("/local/folder", "/local/folder"),  # no backend to give it to
    ],
)
def test_with_option(path, shown):
    assert with_option(path, "use_trash", "false") == shown
