"""Code bundles: the same project packs to the same sha256, what is not code stays out, an
archive is checked against its sha256 and never extracted outside its folder, and the
blob key and uri of a bundle are read back the same way they are written."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from strata.agent.bundles import BundleError, checked, extract
from strata.core.bundles import bundle_key, bundle_uri, key_of
from strata.core.errors import InvalidArgumentError
from strata.core.settings import BlobSettings
from strata.sdk.workflows.bundle import pack, project_files


def _project(root: Path, order: list[str]) -> None:
    files = {
        "workflow.py": "from features import rows\n",
        "features.py": "def rows():\n    return 1\n",
        "pkg/__init__.py": "",
        "pkg/model.py": "WEIGHTS = [1, 2]\n",
    }
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[name])


def test_the_same_files_pack_to_the_same_sha256_whatever_their_times_and_order(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _project(first, ["workflow.py", "features.py", "pkg/__init__.py", "pkg/model.py"])
    _project(second, ["pkg/model.py", "pkg/__init__.py", "features.py", "workflow.py"])
    for path in second.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (second / "features.py").chmod(0o600)

    one, other = pack(first), pack(second)

    assert one.sha256 == other.sha256
    assert one.archive == other.archive
    assert one.sha256 == hashlib.sha256(one.archive).hexdigest()
    assert one.files == ("features.py", "pkg/__init__.py", "pkg/model.py", "workflow.py")


def test_a_changed_file_changes_the_sha256(tmp_path: Path) -> None:
    _project(tmp_path, ["workflow.py", "features.py", "pkg/__init__.py", "pkg/model.py"])
    before = pack(tmp_path).sha256

    (tmp_path / "pkg" / "model.py").write_text("WEIGHTS = [1, 3]\n")

    assert pack(tmp_path).sha256 != before


def test_caches_version_control_virtualenvs_and_links_stay_out(tmp_path: Path) -> None:
    _project(tmp_path, ["workflow.py", "features.py", "pkg/__init__.py", "pkg/model.py"])
    for junk in (".git/HEAD", "__pycache__/features.cpython-312.pyc", "pkg/__pycache__/m.pyc"):
        (tmp_path / junk).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / junk).write_text("junk")
    (tmp_path / "env" / "lib").mkdir(parents=True)
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    (tmp_path / "env" / "lib" / "site.py").write_text("")
    (tmp_path / "stale.pyc").write_bytes(b"\0")
    (tmp_path / "elsewhere.py").symlink_to("/etc/hostname")
    clean = pack(tmp_path)

    assert project_files(tmp_path) == [
        "features.py",
        "pkg/__init__.py",
        "pkg/model.py",
        "workflow.py",
    ]
    with tarfile.open(fileobj=io.BytesIO(clean.archive), mode="r:gz") as tar:
        assert tar.getnames() == list(clean.files)
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in tar.getmembers()} == {(0, 0, 0, "")}


def test_an_archive_not_matching_its_sha256_is_refused_naming_both_hashes() -> None:
    archive = b"not the bundle that was applied"
    expected = hashlib.sha256(b"the bundle that was applied").hexdigest()
    actual = hashlib.sha256(archive).hexdigest()

    with pytest.raises(BundleError) as refused:
        checked(archive, expected)

    assert expected in str(refused.value)
    assert actual in str(refused.value)
    checked(archive, actual)  # the right hash passes


def _archive(*members: tarfile.TarInfo, data: bytes = b"x = 1\n") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
            else:
                tar.addfile(member)
    return raw.getvalue()


def _link(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.SYMTYPE
    member.linkname = target
    return member


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../escaped.py"),
        tarfile.TarInfo("/tmp/absolute.py"),
        _link("pkg/escape", "../../outside"),
        _link("pkg/rooted", "/etc/passwd"),
    ],
    ids=["dot-dot", "absolute", "link-out", "absolute-link"],
)
def test_extraction_refuses_members_landing_outside_the_folder(
    tmp_path: Path, member: tarfile.TarInfo
) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()

    with pytest.raises(BundleError, match="cannot be extracted"):
        extract(_archive(member), folder)

    assert not (tmp_path / "escaped.py").exists()
    assert not (tmp_path / "outside").exists()


def test_a_packed_project_extracts_to_the_same_files(tmp_path: Path) -> None:
    project = tmp_path / "project"
    _project(project, ["workflow.py", "features.py", "pkg/__init__.py", "pkg/model.py"])
    folder = tmp_path / "extracted"
    folder.mkdir()

    extract(pack(project).archive, folder)

    assert project_files(folder) == project_files(project)
    assert (folder / "pkg" / "model.py").read_text() == "WEIGHTS = [1, 2]\n"


SHA = "ab" * 32


def test_a_bundle_uri_reads_back_as_its_key_on_either_store(tmp_path: Path) -> None:
    s3 = BlobSettings(backend="s3", bucket="team")
    local = BlobSettings(backend="local", root=tmp_path)

    assert bundle_uri(s3, SHA) == f"s3://team/bundles/{SHA}.tar.gz"
    assert key_of(bundle_uri(s3, SHA), s3) == bundle_key(SHA) == f"bundles/{SHA}.tar.gz"
    assert key_of(bundle_uri(local, SHA), local) == bundle_key(SHA)


def test_a_uri_the_agents_store_does_not_hold_is_refused_naming_it(tmp_path: Path) -> None:
    s3 = BlobSettings(backend="s3", bucket="team")

    with pytest.raises(InvalidArgumentError, match="bucket 'other'"):
        key_of(f"s3://other/bundles/{SHA}.tar.gz", s3)
    with pytest.raises(InvalidArgumentError, match="not in this 's3' blob store"):
        key_of((tmp_path / "bundles" / f"{SHA}.tar.gz").as_uri(), s3)
    with pytest.raises(InvalidArgumentError, match=r"bundle\.sha256"):
        bundle_key("ABC")
