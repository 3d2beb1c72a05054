"""docker-py (PyPI `docker`) against `buildpy serve`: containers and volumes as a Python program
drives them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.apiserver import serving
from tests.imagekit import busybox_or_skip

docker = pytest.importorskip("docker")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    busybox_or_skip()
    with serving(tmp_path_factory.mktemp("dockerpy")) as srv:
        c = docker.DockerClient(base_url=f"unix://{srv.sock}", version="1.41", timeout=120)
        yield c
        c.close()


def test_run_returns_output_and_raises_on_failure(client) -> None:  # noqa: ANN001
    assert client.containers.run("busybox", "echo hi", remove=True) == b"hi\n"
    with pytest.raises(docker.errors.ContainerError) as e:
        client.containers.run("busybox", ["sh", "-c", "echo bad >&2; exit 4"], remove=True)
    assert e.value.exit_status == 4
    assert b"bad" in e.value.stderr


def test_detached_logs_wait_remove(client) -> None:  # noqa: ANN001
    c = client.containers.run("busybox", ["sh", "-c", "echo one; echo two >&2; exit 6"], detach=True,
                              name="pydet", labels={"from": "docker-py"}, environment={"A": "1"})
    assert c.wait() == {"StatusCode": 6, "Error": None}
    assert c.logs() == b"one\ntwo\n"
    assert c.logs(stdout=False) == b"two\n"
    c.reload()
    assert c.status == "exited" and c.name == "pydet" and c.labels["from"] == "docker-py"
    assert c.attrs["State"]["ExitCode"] == 6
    assert [x.id for x in client.containers.list(all=True, filters={"name": "pydet"})] == [c.id]
    c.remove()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("pydet")


def test_stop_kill_and_force_remove(client) -> None:  # noqa: ANN001
    c = client.containers.run("busybox", ["sleep", "100"], detach=True)
    c.reload()
    assert c.status == "running"
    assert [x.id for x in client.containers.list()] == [c.id]
    with pytest.raises(docker.errors.APIError) as e:
        c.remove()
    assert e.value.status_code == 409
    c.kill()
    assert c.wait()["StatusCode"] == 137
    c.remove()
    c = client.containers.run("busybox", ["sleep", "100"], detach=True)
    c.stop(timeout=30)  # sleep is not PID 1 here: SIGTERM ends it
    assert c.wait()["StatusCode"] == 143
    c.remove(force=True)


def test_volumes(client) -> None:  # noqa: ANN001
    v = client.volumes.create("pyvol", labels={"x": "y"})
    assert v.name == "pyvol" and v.attrs["Labels"] == {"x": "y"}
    out = client.containers.run("busybox", ["sh", "-c", "echo data > /v/f && cat /v/f"],
                                volumes={"pyvol": {"bind": "/v", "mode": "rw"}}, remove=True)
    assert out == b"data\n"
    assert "pyvol" in [x.name for x in client.volumes.list()]
    assert client.volumes.get("pyvol").attrs["Mountpoint"].endswith("/volumes/pyvol/_data")
    v.remove()
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get("pyvol")


def test_missing_image_and_container(client) -> None:  # noqa: ANN001
    with pytest.raises(docker.errors.ImageNotFound):
        client.containers.create("no-such-image:1")
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("no-such-container")


def test_images_build(client, tmp_path) -> None:  # noqa: ANN001
    from tests.sandboxkit import sandbox_or_skip

    sandbox_or_skip()
    (tmp_path / "Dockerfile").write_text("FROM busybox\nARG WHO\nRUN echo \"built for $WHO\" > /who\nCMD [\"cat\", \"/who\"]\n")
    image, logs = client.images.build(path=str(tmp_path), tag="pybuilt:1", buildargs={"WHO": "docker-py"}, rm=True)
    assert "pybuilt:1" in image.tags
    assert any("Successfully built" in (line.get("stream") or "") for line in logs)
    assert client.images.get("pybuilt:1").id == image.id
    assert client.containers.run("pybuilt:1", remove=True) == b"built for docker-py\n"
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN exit 3\n")
    with pytest.raises(docker.errors.BuildError) as e:
        client.images.build(path=str(tmp_path), tag="pybroken:1")
    assert "exit" in str(e.value)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("pybroken:1")
    client.images.remove("pybuilt:1")
