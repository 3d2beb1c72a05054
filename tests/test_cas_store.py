"""The store on disk: blobs appear whole or not at all, wrong content stores nothing, refs are an
OCI layout index, and the read-modify-writes (index.json, diffids/) survive concurrent writers."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from buildpy.cas.digest import DigestError, of_bytes
from buildpy.cas.layers import Layer, blobs_for_diff_id, record_diff_id
from buildpy.cas.media import OCI_LAYER_GZIP, OCI_MANIFEST, REF_NAME, Descriptor
from buildpy.cas.store import Store, StoreError
from tests.conftest import REPO


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def _run_python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, stdout=subprocess.PIPE)


def test_new_store_is_an_oci_layout(store):
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(store.index_path.read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []
    assert list(store.iter_blobs()) == []


def test_put_and_read_back(store):
    digest = store.put_bytes(b"hello")
    assert digest == of_bytes(b"hello")
    assert store.read_blob(digest) == b"hello"
    assert store.blob_path(digest).name == digest.partition(":")[2]
    assert list(store.iter_blobs()) == [digest]
    assert os.listdir(store.tmp_dir) == []


def test_wrong_digest_stores_nothing(store):
    wrong = of_bytes(b"other")
    with pytest.raises(DigestError, match="does not match"):
        store.put_bytes(b"hello", expected=wrong)
    with pytest.raises(DigestError, match="does not match"):
        store.put_stream(io.BytesIO(b"hello"), expected=wrong)
    with pytest.raises(DigestError, match="larger than"):
        store.put_stream(io.BytesIO(b"hello"), size=3)
    with pytest.raises(DigestError, match="were announced"):
        store.put_stream(io.BytesIO(b"hello"), size=9)
    assert list(store.iter_blobs()) == []
    assert os.listdir(store.tmp_dir) == []  # the temp files went with the failures


def test_error_inside_ingest_discards_the_write(store):
    with pytest.raises(RuntimeError):
        with store.ingest() as w:
            w.write(b"partial")
            raise RuntimeError("source failed")
    assert list(store.iter_blobs()) == [] and os.listdir(store.tmp_dir) == []


def test_killed_ingest_leaves_only_a_temp_file(store):
    """A writer SIGKILLed mid-blob: the blob is not in the store, its temp file is in tmp/."""
    proc = _run_python(f"""
        import time
        from buildpy.cas.store import Store
        s = Store({str(store.root)!r})
        with s.ingest() as w:
            w.write(b"x" * 100000)
            print("writing", flush=True)
            time.sleep(60)
    """)
    assert proc.stdout.readline() == b"writing\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(store.iter_blobs()) == []
    assert len(os.listdir(store.tmp_dir)) == 1
    assert store.clear_tmp() == 100000
    assert os.listdir(store.tmp_dir) == []


def test_refs_live_in_index_json(store):
    digest = store.put_bytes(b"{}")
    target = Descriptor(OCI_MANIFEST, digest, 2)
    store.set_ref("docker.io/library/a:latest", target)
    store.set_ref("docker.io/library/b:1", target)
    store.set_ref("docker.io/library/a:latest", target)  # replaces, does not duplicate
    entries = json.loads(store.index_path.read_text())["manifests"]
    assert [e["annotations"][REF_NAME] for e in entries] == ["docker.io/library/a:latest", "docker.io/library/b:1"]
    assert store.get_ref("docker.io/library/b:1") == target
    assert store.delete_ref("docker.io/library/b:1") == target
    assert store.delete_ref("docker.io/library/b:1") is None
    assert list(store.refs()) == ["docker.io/library/a:latest"]


def test_ref_to_a_missing_blob_is_refused(store):
    with pytest.raises(StoreError, match="not in the store"):
        store.set_ref("docker.io/library/a:latest", Descriptor(OCI_MANIFEST, of_bytes(b"absent"), 6))
    assert store.refs() == {}


def test_damaged_index_is_a_clear_error(store):
    store.index_path.write_text("{not json")
    with pytest.raises(StoreError, match="index.json is damaged"):
        store.refs()


def test_unusable_root_is_a_store_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot use store"):
        Store(tmp_path / "file" / "store")


def test_missing_blob_is_a_store_error(store):
    with pytest.raises(StoreError, match="is not in the store"):
        store.read_blob(of_bytes(b"absent"))
    with pytest.raises(DigestError, match="invalid digest"):
        store.blob_path("sha256:../../etc/passwd")


def test_concurrent_set_ref_keeps_every_ref(store):
    """Four processes tagging 25 names each at once: the refs lock keeps all 100."""
    digest = store.put_bytes(b"{}")
    procs = [
        _run_python(f"""
            from buildpy.cas.media import Descriptor
            from buildpy.cas.store import Store
            s = Store({str(store.root)!r})
            for i in range(25):
                s.set_ref(f"docker.io/library/p{p}:{{i}}", Descriptor("{OCI_MANIFEST}", "{digest}", 2))
        """)
        for p in range(4)
    ]
    assert [p.wait() for p in procs] == [0] * 4
    assert len(store.refs()) == 100


def test_concurrent_diff_id_records_keep_every_blob(store):
    """Several processes recording blobs for one diffID: none loses another's entry."""
    diff_id = of_bytes(b"the uncompressed tar")
    procs = [
        _run_python(f"""
            from buildpy.cas.layers import Layer, record_diff_id
            from buildpy.cas.media import Descriptor
            from buildpy.cas.store import Store
            s = Store({str(store.root)!r})
            for i in range(10):
                data = b"blob %d %d" % ({p}, i)
                d = s.put_bytes(data)
                record_diff_id(s, Layer(Descriptor("{OCI_LAYER_GZIP}", d, len(data)), "{diff_id}"))
        """)
        for p in range(4)
    ]
    assert [p.wait() for p in procs] == [0] * 4
    assert len(blobs_for_diff_id(store, diff_id)) == 40


def test_diff_id_index_names_present_blobs_only(store):
    diff_id = of_bytes(b"tar")
    d = store.put_bytes(b"gz")
    record_diff_id(store, Layer(Descriptor(OCI_LAYER_GZIP, d, 2), diff_id))
    record_diff_id(store, Layer(Descriptor(OCI_LAYER_GZIP, d, 2), diff_id))  # recorded once
    assert blobs_for_diff_id(store, diff_id) == [Descriptor(OCI_LAYER_GZIP, d, 2)]
    store.delete_blob(d)
    assert blobs_for_diff_id(store, diff_id) == []
