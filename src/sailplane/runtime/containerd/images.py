"""Images for the containerd runtime: its own store first, then the local Docker engine's.

containerd keeps images per namespace and never sees Docker's. An image missing there but
present in the Docker engine on this machine (built by ``images/build``, say) is imported
from it, streamed: ``docker save IMAGE | ctr images import -``, with the bytes counted on the
way and progress logged every few seconds. Concurrent spawns of the same image share one
import. Only when Docker does not have it either is a registry asked (if the pull policy lets
it), and a failure then says where the image was looked for and what to run.

The Docker engine is reached through its CLI (``docker``), so the containerd runtime stays
free of the Docker library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable

from sailplane.errors import RuntimeFailure
from sailplane.runtime.containerd.ctr import Ctr, normalize_image

log = logging.getLogger(__name__)

# An import of an image of a few hundred MB takes seconds; this only stops a stuck one.
IMPORT_TIMEOUT_SECONDS = 600.0
DOCKER_INSPECT_TIMEOUT_SECONDS = 30.0
PROGRESS_EVERY_SECONDS = 2.0
CHUNK_BYTES = 1 << 20
DOCKER_CLI = "docker"


def import_command(image: str, ctr: Ctr) -> str:
    """The command a person would run to do the import by hand."""
    return (f"docker save {image} | ctr --address {ctr.address} --namespace {ctr.namespace} "
            "images import -")


class DockerImages:
    """The local Docker engine's images, as a source for containerd's store."""

    def __init__(self, binary: str = DOCKER_CLI) -> None:
        self.binary = binary
        self._imports: dict[str, asyncio.Task[None]] = {}  # ref -> the import under way

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    async def size(self, image: str) -> int | None:
        """The image's size in bytes if the Docker engine has it, else None (also when there
        is no Docker engine or CLI to ask)."""
        if not self.available():
            return None
        try:
            process = await asyncio.create_subprocess_exec(
                self.binary, "image", "inspect", "--format", "{{.Size}}", image,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            return None
        try:
            async with asyncio.timeout(DOCKER_INSPECT_TIMEOUT_SECONDS):
                out, _ = await process.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            return None
        text = out.decode().strip()
        return int(text) if text.isdigit() else 0

    async def import_once(self, image: str, ctr: Ctr,
                          slot: Callable[[], contextlib.AbstractAsyncContextManager[None]]
                          | None = None) -> None:
        """Import ``image`` from Docker into ``ctr``'s namespace; callers asking for an
        image whose import is under way wait for that one. Raises RuntimeFailure."""
        ref = normalize_image(image)
        task = self._imports.get(ref)
        if task is None:
            task = asyncio.create_task(self._import(image, ctr, slot))
            self._imports[ref] = task
            task.add_done_callback(lambda _: self._imports.pop(ref, None))
        await asyncio.shield(task)  # one caller cancelled does not stop the others' import

    async def _import(self, image: str, ctr: Ctr,
                      slot: Callable[[], contextlib.AbstractAsyncContextManager[None]]
                      | None) -> None:
        size = await self.size(image)
        if size is None:
            raise RuntimeFailure(f"image {image!r} is not in the local Docker engine")
        async with slot() if slot is not None else contextlib.nullcontext():
            await _stream(self.binary, image, ctr, size)


async def _stream(binary: str, image: str, ctr: Ctr, size: int) -> None:
    """``docker save IMAGE`` into ``ctr images import -``, counting the bytes."""
    log.info("importing image %s from the local Docker engine into containerd namespace %s "
             "(%.0f MB unpacked)", image, ctr.namespace, size / 1e6)
    started = time.monotonic()
    save = await asyncio.create_subprocess_exec(
        binary, "save", image, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    load = await asyncio.create_subprocess_exec(
        *ctr.argv("images", "import", "-"), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert save.stdout is not None and load.stdin is not None
    copied = 0
    try:
        async with asyncio.timeout(IMPORT_TIMEOUT_SECONDS):
            told = time.monotonic()
            while chunk := await save.stdout.read(CHUNK_BYTES):
                load.stdin.write(chunk)
                await load.stdin.drain()
                copied += len(chunk)
                if time.monotonic() - told >= PROGRESS_EVERY_SECONDS:
                    told = time.monotonic()
                    log.info("importing image %s: %.0f MB so far", image, copied / 1e6)
            load.stdin.close()
            save_err = await save.stderr.read() if save.stderr else b""
            _, load_err = await load.communicate()
            await save.wait()
    except BaseException as exc:  # a timeout, a broken pipe or a cancellation: kill both
        for process in (save, load):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if isinstance(exc, TimeoutError):
            raise RuntimeFailure(f"importing image {image!r} from Docker took more than "
                                 f"{IMPORT_TIMEOUT_SECONDS:.0f} s") from exc
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            _, load_err = await load.communicate()
            raise RuntimeFailure(f"importing image {image!r} from Docker failed: ctr images "
                                 f"import: {_last_line(load_err)}") from exc
        raise
    if save.returncode != 0:
        raise RuntimeFailure(f"importing image {image!r} from Docker failed: docker save: "
                             f"{_last_line(save_err)}")
    if load.returncode != 0:
        raise RuntimeFailure(f"importing image {image!r} from Docker failed: ctr images "
                             f"import: {_last_line(load_err)}")
    log.info("imported image %s from the local Docker engine (%.0f MB in %.1f s)", image,
             copied / 1e6, time.monotonic() - started)


def _last_line(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()
             if line.strip()]
    return lines[-1] if lines else "no message"

