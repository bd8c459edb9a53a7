"""``ctr``, containerd's own client, run as asyncio subprocesses (never blocking the loop).

Every call is bound to one socket and one namespace. A failed call raises :class:`CtrError`
with ctr's own message (its last ``ctr: ...`` line), which callers translate into
:class:`~sailplane.errors.RuntimeFailure` where they know what was being done.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
from dataclasses import dataclass

# dockerd started without systemd runs its own containerd here; a system containerd is below.
DOCKER_CONTAINERD_ADDRESS = "/run/docker/containerd/containerd.sock"
SYSTEM_CONTAINERD_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "sailplane"
CTR_TIMEOUT_SECONDS = 60.0

_NOT_FOUND = re.compile(r"not found|no such", re.IGNORECASE)
# The fields of a logrus line: msg="..." and error="...", with \" inside.
_LOG_MESSAGE = re.compile(r'msg="((?:[^"\\]|\\.)*)"')
_LOG_ERROR = re.compile(r'error="((?:[^"\\]|\\.)*)"')


def default_address() -> str:
    """Docker's containerd if its socket is there, else the system one."""
    try:
        if stat.S_ISSOCK(os.stat(DOCKER_CONTAINERD_ADDRESS).st_mode):
            return DOCKER_CONTAINERD_ADDRESS
    except OSError:
        pass
    return SYSTEM_CONTAINERD_ADDRESS


class CtrError(Exception):
    """A ``ctr`` call failed; ``message`` is ctr's explanation."""

    def __init__(
        self, args: tuple[str, ...], returncode: int, message: str, stderr: str = ""
    ) -> None:
        super().__init__(f"ctr {' '.join(args[:2])} failed ({returncode}): {message}")
        self.returncode = returncode
        self.message = message
        self.stderr = stderr  # all of it: a call for many ids logs one line per failed id

    @property
    def not_found(self) -> bool:
        return bool(_NOT_FOUND.search(self.message))


@dataclass(frozen=True)
class Ctr:
    """``ctr --address ADDRESS --namespace NAMESPACE``."""

    address: str
    namespace: str = DEFAULT_NAMESPACE
    binary: str = "ctr"

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--address", self.address, "--namespace", self.namespace, *args]

    async def __call__(self, *args: str, timeout: float = CTR_TIMEOUT_SECONDS) -> str:
        """Run ``ctr ARGS``; its stdout, or CtrError (also on a timeout, after killing it)."""
        stdout, _ = await self.output(*args, timeout=timeout)
        return stdout

    async def output(
        self, *args: str, timeout: float = CTR_TIMEOUT_SECONDS
    ) -> tuple[str, str]:
        """Run ``ctr ARGS``; its stdout and stderr (ctr logs warnings there), or CtrError."""
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv(*args), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise CtrError(args, -1, f"cannot run {self.binary}: {exc.strerror}") from exc
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await process.communicate()
        except BaseException as exc:  # a timeout or a cancellation: leave no ctr behind
            if process.returncode is None:
                process.kill()
                await process.wait()
            if isinstance(exc, TimeoutError):
                raise CtrError(args, -1, f"no answer within {timeout:.0f} s") from exc
            raise
        if process.returncode != 0:
            text = stderr.decode()
            raise CtrError(args, process.returncode or -1, explanation(text), text)
        return stdout.decode(), stderr.decode()

    async def each(self, *args: str, ids: list[str]) -> dict[str, CtrError]:
        """Run ``ctr ARGS ID...`` once for many ids (``containers delete``, ``tasks delete``:
        ctr works through them one by one and goes on after a failure); the ids that failed,
        each with its own error. A failure ctr names no id in is every id's."""
        command = (*args, *ids)
        try:
            await self.output(*command)
        except CtrError as exc:
            failures = id_failures(exc.stderr, ids)
            if failures:
                return {cid: CtrError(command, exc.returncode, message)
                        for cid, message in failures.items()}
            return dict.fromkeys(ids, exc)
        return {}

    def available(self) -> bool:
        return shutil.which(self.binary) is not None


def task_statuses(listing: str) -> dict[str, str]:
    r"""``ctr tasks ls`` -> container id -> task status (RUNNING, STOPPED, ...).

    >>> task_statuses("TASK PID STATUS\nsailplane-b1 42 RUNNING\n")
    {'sailplane-b1': 'RUNNING'}
    """
    return {fields[0]: fields[2] for fields in _task_rows(listing)}


def task_pids(listing: str) -> dict[str, int]:
    r"""``ctr tasks ls`` -> container id -> its task's init process, as the host sees it.

    >>> task_pids("TASK PID STATUS\nsailplane-b1 42 RUNNING\n")
    {'sailplane-b1': 42}
    """
    return {fields[0]: int(fields[1]) for fields in _task_rows(listing) if fields[1].isdigit()}


def _task_rows(listing: str) -> list[list[str]]:
    """The rows of ``ctr tasks ls`` (TASK PID STATUS), split, without the header."""
    return [fields for fields in map(str.split, listing.splitlines()[1:]) if len(fields) >= 3]


def id_failures(stderr: str, ids: list[str]) -> dict[str, str]:
    r"""The ids a call for many ids logged an error for (``level=error``), each with ctr's
    ``error=`` text (else the whole line).

    >>> id_failures('time="t" level=error msg="failed to delete container \\"sp-b1\\"" '
    ...             'error="cannot delete a non stopped container"', ["sp-b", "sp-b1"])
    {'sp-b1': 'cannot delete a non stopped container'}
    """
    failures: dict[str, str] = {}
    for line in stderr.splitlines():
        if "level=error" not in line:
            continue
        message = _LOG_MESSAGE.search(line)
        named = message.group(1) if message else line
        error = _LOG_ERROR.search(line)
        for cid in ids:
            if re.search(rf"(?<![\w.-]){re.escape(cid)}(?![\w.-])", named):
                failures.setdefault(cid, (error.group(1) if error else line).replace('\\"', '"'))
    return failures


def explanation(stderr: str) -> str:
    """ctr's own error line (``ctr: ...``), else the last line it wrote."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("ctr: "):
            return line.removeprefix("ctr: ")
    return lines[-1] if lines else "no message"


def normalize_image(image: str) -> str:
    """A Docker-style image name as containerd stores it (Docker's normalization).

    >>> normalize_image("sailplane/static")
    'docker.io/sailplane/static:latest'
    >>> normalize_image("busybox:1.36")
    'docker.io/library/busybox:1.36'
    >>> normalize_image("127.0.0.1:5000/x/y@sha256:ab")
    '127.0.0.1:5000/x/y@sha256:ab'
    """
    first, slash, _ = image.partition("/")
    has_domain = bool(slash) and ("." in first or ":" in first or first == "localhost")
    if not has_domain:
        image = f"docker.io/{image}" if slash else f"docker.io/library/{image}"
    name = image.split("@", 1)[0]
    if "@" not in image and ":" not in name.rsplit("/", 1)[-1]:
        image += ":latest"
    return image
