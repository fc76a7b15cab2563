"""Child processes that a test cannot leak: each runs in its own process group, and the whole group
(the command and any worker it started) is killed and waited for whatever happens in the test.

``subprocess.run`` kills only the command on a timeout, not the training workers it spawned, and
a test that fails between ``Popen`` and ``wait`` leaves the process running (its ``ResourceWarning``
then fails an unrelated test under ``filterwarnings = error``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import IO, Any


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL every process of ``process``'s group (started with ``start_new_session``), reap it."""
    with contextlib.suppress(ProcessLookupError):  # an empty group: everything already ended
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start(
    command: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    output: IO[Any] | int | None = None,
) -> subprocess.Popen[bytes]:
    """``Popen`` in a new process group, stdout and stderr to ``output``; end it with
    :func:`kill_group` (e.g. in a ``finally`` or a fixture's teardown)."""
    return subprocess.Popen(
        list(command), env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )


def run(
    command: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout)``, except that
    the command's whole process group is killed afterwards, also on a timeout or an error."""
    process = subprocess.Popen(
        list(command),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        kill_group(process)
        process.communicate()  # closes the pipes
        raise
    kill_group(process)  # any worker the command left behind
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
