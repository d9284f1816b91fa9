"""`mnistcli` commands started as forks of one process that has imported torch already, for the tests that need a
command's real process (its exit code, its streams, files it leaves) but not a fresh interpreter.

The server imports torch, numpy, PIL, yaml and mnistcli's command line, runs nothing, and forks once per command;
the child takes the command's working folder, environment and standard streams, and runs `mnistcli.cli.app.main`
with the arguments, as the console script does. Each start skips `import torch` (seconds on a small CPU). Tests about
imports, `--help`'s speed, broken installs, closed streams or signals start real interpreters instead."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

SERVER = r"""
import json, os, sys, traceback
import numpy, PIL.Image, torch, yaml  # what every command imports: paid once, here
from mnistcli.cli.app import main

requests = os.fdopen(0, "r")
replies = os.fdopen(os.dup(1), "w")
for line in requests:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(replies.fileno())  # the command's processes never hold the server's reply pipe
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            for fd, name in enumerate(("stdin", "stdout", "stderr")):
                new = os.open(req[name], os.O_WRONLY if fd else os.O_RDONLY)
                os.dup2(new, fd)
                os.close(new)
            sys.argv = ["mnistcli", *req["args"]]
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    replies.write(json.dumps({"pid": pid}) + "\n")
    replies.flush()
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
    replies.flush()
"""


class ForkServer:
    """One server process; `run` starts a command as its fork and waits for it, like `subprocess.run`."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def _reply(self, timeout: float) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit {self.proc.poll()})")
        return json.loads(line)

    def run(
        self,
        args: list[str],
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 600,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `mnistcli ARGS` in a fork; its exit code and its whole stdout and stderr, as text."""
        assert self.proc.stdin is not None
        with tempfile.TemporaryDirectory() as tmp:
            streams = {name: Path(tmp) / name for name in ("stdin", "stdout", "stderr")}
            streams["stdin"].write_text(input or "")
            streams["stdout"].touch()
            streams["stderr"].touch()
            request = {"args": [str(a) for a in args], "cwd": str(cwd or os.getcwd())}
            request |= {"env": dict(env if env is not None else os.environ), **{k: str(v) for k, v in streams.items()}}
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            pid = self._reply(60)["pid"]
            try:
                code = self._reply(timeout)["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                self._reply(60)
                raise subprocess.TimeoutExpired(["mnistcli", *map(str, args)], timeout) from None
            out, err = streams["stdout"].read_text(), streams["stderr"].read_text()
        return subprocess.CompletedProcess(["mnistcli", *map(str, args)], code, out, err)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


_server: ForkServer | None = None


def mnistcli(
    *args: object,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`mnistcli ARGS` as a fork of the tests' one server (started at the first call, ended with the tests)."""
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = ForkServer()
        atexit.register(_server.close)
    return _server.run([str(a) for a in args], cwd, env, timeout, input)
