"""containerd's images from the local Docker engine: one import per image, clear failures.

Against a real containerd and Docker: tests/integration/test_density.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from sailplane.errors import RuntimeFailure
from sailplane.runtime.containerd.ctr import Ctr
from sailplane.runtime.containerd.images import DockerImages, import_command
from sailplane.runtime.containerd.runtime import ContainerdRuntime
from sailplane.spec import PullPolicy

CTR = Ctr("/run/nowhere.sock", "ns")


class CountingImages(DockerImages):
    def __init__(self) -> None:
        super().__init__()
        self.imports = 0

    async def _import(self, image, ctr, slot) -> None:
        self.imports += 1
        await asyncio.sleep(0.05)


def test_concurrent_asks_for_one_image_share_one_import() -> None:
    images = CountingImages()

    async def scenario() -> None:
        await asyncio.gather(*(images.import_once("sailplane/static", CTR) for _ in range(10)),
                             images.import_once("sailplane/static:latest", CTR))
        await images.import_once("sailplane/demo", CTR)

    asyncio.run(scenario())
    assert images.imports == 2


def test_a_cancelled_asker_does_not_stop_the_import_for_the_others() -> None:
    images = CountingImages()

    async def scenario() -> None:
        first = asyncio.create_task(images.import_once("x", CTR))
        second = asyncio.create_task(images.import_once("x", CTR))
        await asyncio.sleep(0.01)
        first.cancel()
        await second
        with contextlib.suppress(asyncio.CancelledError):
            await first

    asyncio.run(scenario())
    assert images.imports == 1


def test_without_a_docker_cli_the_failure_says_so_and_what_to_run(tmp_path: Path) -> None:
    runtime = ContainerdRuntime("d", tmp_path, "/run/nowhere.sock", "ns",
                                docker_images=DockerImages(binary="/nonexistent/docker"))

    async def scenario() -> str:

        async def absent(ref: str, cached: bool = True) -> bool:
            return False

        runtime._has_image = absent  # type: ignore[method-assign]
        with pytest.raises(RuntimeFailure) as caught:
            await runtime.prepare("sailplane/x", PullPolicy.NEVER)
        return caught.value.message

    message = asyncio.run(scenario())
    assert "namespace 'ns' at /run/nowhere.sock" in message
    assert "no docker CLI" in message
    assert import_command("sailplane/x", runtime.ctr) in message


def test_the_import_command_is_what_a_person_would_type() -> None:
    assert import_command("sailplane/static:latest", CTR) == (
        "docker save sailplane/static:latest | ctr --address /run/nowhere.sock --namespace ns "
        "images import -")
