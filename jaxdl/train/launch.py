"""Start ``N`` local processes of one command as a ``jax.distributed`` job (for testing on one host).

    python -m jaxdl.train.launch --num_processes 2 --devices_per_process 4 -- \\
        python -m experiments.mnist_cnn --workdir runs/mnist_mp --num_devices 8

Each process gets ``JAXDL_COORDINATOR_ADDRESS`` (``localhost:<free port>``), ``JAXDL_NUM_PROCESSES``
and ``JAXDL_PROCESS_ID`` in its environment, which
:func:`jaxdl.train.parallel.initialize_distributed` reads (the experiment scripts call it first);
``{process_id}``, ``{num_processes}`` and ``{coordinator_address}`` in the command are replaced
too. ``--devices_per_process K`` forces ``K`` CPU devices per process
(``XLA_FLAGS=--xla_force_host_platform_device_count=K``, ``JAX_PLATFORMS=cpu``), so a 2 x 4 run
behaves like two hosts of four accelerators. If one process fails the others are stopped; the exit
status is the first non-zero one.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from jaxdl.train.parallel import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(
    command: Sequence[str],
    num_processes: int,
    devices_per_process: int | None = None,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> list[int]:
    """Run ``command`` as ``num_processes`` cooperating processes; return their exit codes.

    Raises:
      ValueError: ``num_processes`` or ``devices_per_process`` is not a positive int, or the
        command is empty.
      subprocess.TimeoutExpired: the job ran longer than ``timeout`` seconds (all are stopped).
    """
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be a positive int, got {num_processes!r}")
    if devices_per_process is not None and (
        not isinstance(devices_per_process, int) or devices_per_process < 1
    ):
        raise ValueError(
            f"devices_per_process must be a positive int or None, got {devices_per_process!r}"
        )
    if not command:
        raise ValueError("command must not be empty")
    address = f"localhost:{port or free_port()}"
    procs: list[subprocess.Popen] = []
    for pid in range(num_processes):
        child_env = dict(os.environ if env is None else env)
        child_env.update(
            {
                ENV_COORDINATOR: address,
                ENV_NUM_PROCESSES: str(num_processes),
                ENV_PROCESS_ID: str(pid),
            }
        )
        if devices_per_process is not None:
            flags = child_env.get("XLA_FLAGS", "")
            flag = f"--xla_force_host_platform_device_count={devices_per_process}"
            child_env["XLA_FLAGS"] = f"{flags} {flag}".strip()
            child_env["JAX_PLATFORMS"] = "cpu"
        fields = {"process_id": pid, "num_processes": num_processes, "coordinator_address": address}
        args = list(command)
        for key, value in fields.items():  # plain replacement: other braces pass through
            args = [a.replace("{" + key + "}", str(value)) for a in args]
        procs.append(subprocess.Popen(args, env=child_env))
    deadline = None if timeout is None else time.monotonic() + timeout
    codes: list[int | None] = [None] * num_processes
    try:
        while any(c is None for c in codes):
            for i, p in enumerate(procs):
                if codes[i] is None:
                    codes[i] = p.poll()
            if any(c not in (None, 0) for c in codes):  # one failed: the others would hang
                break
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(list(command), timeout)
            time.sleep(0.1)
    finally:
        for i, p in enumerate(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            codes[i] = p.returncode
    return [int(c) for c in codes]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--devices_per_process", type=int, default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    codes = launch(command, args.num_processes, args.devices_per_process, args.port)
    print(f"exit codes: {codes}", file=sys.stderr)
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
