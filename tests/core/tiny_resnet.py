"""Real `col775 resnet train` processes on generated data small enough for a test to start them often.

Starting Python and importing torch costs seconds on a busy CPU, ten times over in a kill/resume test,
so `Launcher` imports col775 once in a helper process and forks a fresh process per command, which runs
`col775.cli.main` exactly as `python -m col775` does (or a snippet of Python) and can be interrupted or
killed on its own.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ENV = dict(os.environ, COL775_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))

_SERVER = """
import json, os, sys, traceback
from col775 import cli
import col775.resnet.train  # imported once here; every command below runs in a fork of this process

for line in sys.stdin:
    request = json.loads(line)
    if "wait" in request:
        _, status = os.waitpid(request["wait"], 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
        continue
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        continue
    code = 1
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        if "args" in request:
            code = cli.main(request["args"])
        else:
            exec(request["code"])
            code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
"""


def train_args(cache: Path, out: Path, epochs: int) -> list[str]:
    """Arguments after `col775`: 100 training images of 16x16, batch 16 (7 steps an epoch), on the CPU;
    the generated images are kept in `cache`."""
    return [
        "resnet", "train", "--out", str(out), "--norm", "bn", "--blocks-per-stage", "1", "--epochs", str(epochs),
        "--image-size", "16", "--synthetic-train-per-class", "4", "--synthetic-val-per-class", "2",
        "--synthetic-test-per-class", "2", "--batch-size", "16", "--cache-dir", str(cache),
        "--device", "cpu", "--warmup-epochs", "0",
    ]


def wait_for(path: Path, text: str, timeout: float = 120.0) -> None:
    """Wait until the file at `path` holds `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.01)
    raise AssertionError(f"{text!r} never appeared in {path}")


class Launcher:
    """Starts `col775 ARGS` processes; each one's stdout and stderr go to files named by the caller."""

    def __init__(self):
        self._server = subprocess.Popen(
            [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even where the test ignores it
        )

    def _ask(self, request: dict) -> int:
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        return int(self._server.stdout.readline())

    def start(self, args: list[str], stdout: Path, stderr: Path) -> int:
        """The PID of a new process running `col775 ARGS`."""
        return self._ask({"args": args, "stdout": str(stdout), "stderr": str(stderr)})

    def start_python(self, code: str, stdout: Path, stderr: Path) -> int:
        """The PID of a new process running `code`; it exits 0 when the code returns, 1 if it raises."""
        return self._ask({"code": code, "stdout": str(stdout), "stderr": str(stderr)})

    def wait(self, pid: int) -> int:
        """Wait for that process to end (it is reaped: its PID is free again); returns its exit code."""
        return self._ask({"wait": pid})

    def run(self, args: list[str], stdout: Path, stderr: Path) -> int:
        return self.wait(self.start(args, stdout, stderr))

    def run_python(self, code: str, stdout: Path, stderr: Path) -> int:
        return self.wait(self.start_python(code, stdout, stderr))

    def close(self) -> None:
        self._server.stdin.close()
        self._server.wait()
