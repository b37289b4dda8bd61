"""``subprocess.run``'s semantics over any ``Popen`` factory (private).

:func:`nslib.run` and :func:`nslib.spawn.run` start their child differently
but must behave exactly as :func:`subprocess.run` does around it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any


def run_with(
    start: Callable[..., subprocess.Popen[Any]],
    input: str | bytes | None,
    capture_output: bool,
    timeout: float | None,
    check: bool,
    popen_kwargs: dict[str, Any],
) -> subprocess.CompletedProcess[Any]:
    """Call ``start(**popen_kwargs)`` and finish as :func:`subprocess.run` would.

    :raises ValueError: *input* with ``stdin``, or *capture_output* with
        ``stdout``/``stderr``, as :func:`subprocess.run` refuses them.
    :raises subprocess.CalledProcessError: *check* and a non-zero exit.
    :raises subprocess.TimeoutExpired: the child outlived *timeout* (it is killed).
    """
    if input is not None:
        if popen_kwargs.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        popen_kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        if popen_kwargs.get("stdout") is not None or popen_kwargs.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        popen_kwargs["stdout"] = subprocess.PIPE
        popen_kwargs["stderr"] = subprocess.PIPE
    with start(**popen_kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            exc.stdout, exc.stderr = proc.communicate()
            raise
        except BaseException:
            proc.kill()
            raise
        retcode = proc.poll()
        assert retcode is not None
    if check and retcode:
        raise subprocess.CalledProcessError(retcode, proc.args, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(proc.args, retcode, stdout, stderr)
