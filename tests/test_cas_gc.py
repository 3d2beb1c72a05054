"""prune keeps exactly what refs reach (through indexes too) and waits for writers' leases;
fsck finds damaged blobs, missing referents and a broken layout, and calls leftovers info."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from buildpy.cas.digest import of_bytes
from buildpy.cas.gc import CACHE_MOUNTS, Problem, PruneReport, fsck, prune
from buildpy.cas.image import write_index
from buildpy.cas.layers import blobs_for_diff_id
from buildpy.cas.store import Store, StoreError
from tests.conftest import REPO
from tests.imagekit import files_tar, image_from_tars


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def _blobs(store: Store) -> set[str]:
    return set(store.iter_blobs())


def _reachable(image) -> set[str]:
    return {image.digest, image.id, *(d.digest for d in image.layers)}


def test_prune_removes_only_unreachable_blobs(store):
    keep = image_from_tars(store, [files_tar({"a": "keep"}), files_tar({"b": "keep too"})], "docker.io/library/k:1")
    drop = image_from_tars(store, [files_tar({"c": "drop"})], "docker.io/library/d:1")
    stray = store.put_bytes(b"stray")
    store.delete_ref("docker.io/library/d:1")
    dropped = _reachable(drop) | {stray}
    size = sum(store.blob_size(d) for d in dropped)
    report = prune(store)
    assert report == PruneReport(blobs_removed=len(dropped), bytes_freed=size, tmp_freed=0)
    assert _blobs(store) == _reachable(keep)
    assert fsck(store) == []
    assert prune(store) == PruneReport(0, 0, 0)


def test_prune_follows_indexes(store):
    inner = image_from_tars(store, [files_tar({"a": "x"})])
    index = write_index(store, [inner.manifest_descriptor])
    outer = write_index(store, [index])
    store.set_ref("docker.io/library/multi:1", outer)
    prune(store)
    assert _blobs(store) == _reachable(inner) | {index.digest, outer.digest}


def test_prune_keeps_unnamed_index_entries(store):
    image = image_from_tars(store, [files_tar({"a": "x"})])
    entries = json.loads(store.index_path.read_text())
    entries["manifests"].append(image.manifest_descriptor.to_json())  # as a layout tool might add it
    store.index_path.write_text(json.dumps(entries))
    prune(store)
    assert _blobs(store) == _reachable(image)


def test_prune_clears_tmp_and_stale_diff_ids(store):
    image = image_from_tars(store, [files_tar({"a": "x"})], "docker.io/library/a:1")
    (store.tmp_dir / "ingest-dead").write_bytes(b"z" * 1000)
    diff_id = image.diff_ids[0]
    assert blobs_for_diff_id(store, diff_id)
    store.delete_ref("docker.io/library/a:1")
    report = prune(store)
    assert report.tmp_freed == 1000 and os.listdir(store.tmp_dir) == []
    assert list((store.root / "diffids").iterdir()) == []


def test_prune_cache_mounts_only_when_asked(store):
    cache = store.root / CACHE_MOUNTS / "abc"
    cache.mkdir(parents=True)
    (cache / "f").write_bytes(b"c" * 500)
    assert prune(store).cache_freed == 0 and (cache / "f").exists()
    report = prune(store, cache_mounts=True)
    assert report.cache_freed == 500 and report.total_freed == 500
    assert not cache.exists()


def test_prune_refuses_when_a_manifest_is_unreadable(store):
    image = image_from_tars(store, [files_tar({"a": "x"})], "docker.io/library/a:1")
    path = store.blob_path(image.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"{broken")
    with pytest.raises(StoreError, match="cannot prune .*buildpy fsck"):
        prune(store)
    assert all(store.has_blob(d.digest) for d in image.layers)  # nothing swept


def _locks_waiting(pid: int) -> bool:
    """Whether `pid` is blocked waiting for an flock (a `->` line of /proc/locks)."""
    with open("/proc/locks") as f:
        rows = [line.split() for line in f]
    return any(len(r) > 5 and r[1] == "->" and r[5] == str(pid) for r in rows)


def test_prune_waits_for_a_writers_lease(store):
    """A writer has ingested a blob under its lease but not tagged it yet; a prune started then
    blocks on the gc lock (seen in /proc/locks), and the blob survives to be tagged."""
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from buildpy.cas.media import Descriptor
            from buildpy.cas.store import Store
            s = Store({str(store.root)!r})
            with s.lease():
                d = s.put_bytes(b"about to be tagged")
                print(d, flush=True)
                sys.stdin.readline()
                s.set_ref("docker.io/library/new:1", Descriptor("application/octet-stream", d, 18))
        """)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    digest = writer.stdout.readline().strip()
    result: list[PruneReport] = []
    pruner = threading.Thread(target=lambda: result.append(prune(Store(store.root))))
    pruner.start()
    deadline = time.monotonic() + 30
    while pruner.is_alive() and not _locks_waiting(os.getpid()):
        assert time.monotonic() < deadline, "prune never asked for the gc lock"
        time.sleep(0.01)
    assert not result, "prune ran while a writer held its lease"
    writer.stdin.write("go\n")
    writer.stdin.close()
    assert writer.wait() == 0
    pruner.join()
    assert result == [PruneReport(0, 0, 0)]
    assert store.has_blob(digest) and store.get_ref("docker.io/library/new:1").digest == digest


# fsck


def test_fsck_clean(store):
    image_from_tars(store, [files_tar({"a": "x"})], "docker.io/library/a:1")
    assert fsck(store) == []


def test_fsck_finds_a_corrupt_blob(store):
    image = image_from_tars(store, [files_tar({"a": "x"})], "docker.io/library/a:1")
    layer = image.layers[0].digest
    path = store.blob_path(layer)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = fsck(store)
    assert [p.level for p in problems] == ["error"]
    assert problems[0].subject == f"blob {layer}" and "content hashes to sha256:" in problems[0].message


def test_fsck_finds_missing_referents(store):
    image = image_from_tars(store, [files_tar({"a": "x"})], "docker.io/library/a:1")
    store.delete_blob(image.layers[0].digest)
    store.delete_blob(image.id)
    problems = fsck(store)
    assert {(p.level, p.subject) for p in problems} == {("error", "ref docker.io/library/a:1")}
    text = "\n".join(map(str, problems))
    assert image.layers[0].digest in text and image.id in text and "missing" in text


def test_fsck_missing_platform_of_an_index_is_info(store):
    image = image_from_tars(store, [files_tar({"a": "x"})])
    other = image_from_tars(store, [files_tar({"b": "y"})])
    index = write_index(store, [image.manifest_descriptor, other.manifest_descriptor])
    store.set_ref("docker.io/library/multi:1", index)
    store.delete_blob(other.digest)  # a platform never pulled
    assert [p.level for p in fsck(store)] == ["info"]


def test_fsck_finds_unparseable_manifest_and_wrong_size(store):
    image = image_from_tars(store, [files_tar({"a": "x"})], "docker.io/library/a:1")
    bad = store.put_bytes(b"[1, 2]")
    desc = image.manifest_descriptor
    store.set_ref("docker.io/library/bad:1", type(desc)(desc.media_type, bad, 6))
    store.set_ref("docker.io/library/size:1", type(desc)(desc.media_type, desc.digest, desc.size + 1))
    problems = {p.subject: p.message for p in fsck(store)}
    assert "not a JSON object" in problems["ref docker.io/library/bad:1"]
    assert "its descriptor says" in problems["ref docker.io/library/size:1"]


def test_fsck_layout_and_strays(store):
    (store.tmp_dir / "ingest-left").write_bytes(b"x")
    (store.blobs_dir / "not-a-digest").write_bytes(b"x")
    assert {(p.level, p.subject) for p in fsck(store)} == {
        ("info", "tmp"), ("error", "blobs/sha256/not-a-digest")}
    store.index_path.write_text("{")
    (store.root / "oci-layout").write_text('{"imageLayoutVersion": "0.1"}')
    subjects = {p.subject for p in fsck(store) if p.level == "error"}
    assert {"index.json", "oci-layout"} <= subjects


def test_fsck_reports_index_entries_with_missing_blobs(store):
    entries = json.loads(store.index_path.read_text())
    entries["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "digest": of_bytes(b"gone"), "size": 4})
    store.index_path.write_text(json.dumps(entries))
    levels = sorted((p.level, p.subject) for p in fsck(store))
    assert levels == [("error", "index.json entry 0"), ("info", "index.json")]


def test_problem_prints_as_one_line():
    assert str(Problem("error", "blob sha256:ab", "missing")) == "error: blob sha256:ab: missing"
