"""A command run in a background process: progress lines in, Cancel that ends the whole tree.

A reader thread puts the process's output lines on a queue; :meth:`BackgroundProcess.poll`
(called by the Widget's QTimer, or by :meth:`wait`) takes them off on the caller's thread and
turns ``PROGRESS <fraction> <message>`` lines into :attr:`progress`. No Qt here: the Widget
owns the timer, so this class runs and is tested headless.

Cancel ends the *process tree*: ``PythonSlicer`` is a launcher that starts the real Python as
its child, so signalling the launcher alone would leave the work running. The process starts in
a session (process group) of its own; Cancel sends SIGTERM to the group (the command line stops
cleanly and exits 3: it stops within a few tenths of a second, but torch's interpreter shutdown
takes most of a second more), waits up to ``grace_s`` (1.5 s), then SIGKILLs whatever is left
of the group, so the whole tree has ended within 2 s. On
Windows the tree is ended with ``taskkill /T /F``. A cancelled run is told apart from a failed
one: its state is :attr:`RunState.CANCELLED` whatever exit code the killed process left.
"""

from __future__ import annotations

import enum
import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

# The command line's exit codes (crossmodalmas.cli; importing it here would load torch).
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 3
_PROGRESS = re.compile(r"^PROGRESS\s+([0-9.eE+-]+)\s*(.*)$")
_ERROR = re.compile(r"^crossmodalmas: (?:error|unexpected error): (.+)$")
_END = object()  # put on the queue by the reader thread after the last line


class RunState(str, enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Progress:
    """The last progress report: ``fraction`` in [0, 1] and the current step in words."""

    fraction: float = 0.0
    message: str = ""


def parse_progress(line: str) -> Optional[Progress]:
    """A ``PROGRESS <fraction> <message>`` line as :class:`Progress`; None for any other line."""
    match = _PROGRESS.match(line.strip())
    if match is None:
        return None
    try:
        fraction = float(match.group(1))
    except ValueError:
        return None
    return Progress(min(max(fraction, 0.0), 1.0), match.group(2).strip())


class BackgroundProcess:
    """Run ``command`` in the background, follow its progress, cancel it.

    Args:
        command: the program and its arguments.
        env: the environment (None: this process's).
        cwd: the working folder (None: this process's).
    """

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None):
        if not command:
            raise ValueError("BackgroundProcess(): 'command' must name a program, got an empty command")
        self.command = [str(part) for part in command]
        self._env, self._cwd = (dict(env) if env is not None else None), cwd
        self._process: Optional[subprocess.Popen] = None
        self._lines: queue.Queue = queue.Queue()
        self._reader: Optional[threading.Thread] = None
        self._ended = False
        self._cancelled = False
        self.progress = Progress()
        self.log: list[str] = []

    def start(self) -> None:
        """Start the process and its reader thread.

        Raises:
            RuntimeError: already started.
            OSError: the program cannot be started (the message names it).
        """
        if self._process is not None:
            raise RuntimeError("BackgroundProcess.start(): already started")
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=self._env, cwd=self._cwd,
            **_new_process_group())
        self._reader = threading.Thread(target=self._read, name="CrossModalMAS output reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self._process.stdout:
                self._lines.put(line.rstrip("\r\n"))
        finally:
            self._lines.put(_END)

    @property
    def pid(self) -> Optional[int]:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> Optional[int]:
        """What the operating system reported for the process (negative: killed by that signal)."""
        return self._process.returncode if self._ended else None

    @property
    def exit_code(self) -> Optional[int]:
        """The command line's exit code once the process has ended, else None; 3 for a cancelled
        run also where its teardown was cut short by SIGKILL (see :attr:`returncode`)."""
        if not self._ended:
            return None
        return EXIT_CANCELLED if self._cancelled else self._process.returncode

    @property
    def state(self) -> RunState:
        if self._process is None:
            return RunState.NOT_STARTED
        if self._cancelled:
            return RunState.CANCELLED
        if not self._ended:
            return RunState.RUNNING
        return RunState.SUCCEEDED if self._process.returncode == EXIT_OK else RunState.FAILED

    @property
    def error_message(self) -> str:
        """The command line's one-line error, else the last lines of its output."""
        for line in reversed(self.log):
            match = _ERROR.match(line)
            if match:
                return match.group(1)
        return "\n".join(self.log[-5:]) or f"exit code {self.exit_code}"

    def poll(self) -> RunState:
        """Take the output read so far (progress and log) and return the state; never blocks."""
        while not self._ended:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                break
            self._take(item)
        return self.state

    def _take(self, item) -> None:
        if item is _END:
            self._process.wait()
            self._ended = True
            return
        progress = parse_progress(item)
        if progress is None:
            self.log.append(item)
        else:
            self.progress = progress

    def wait(self, timeout: Optional[float] = None) -> RunState:
        """Block until the process has ended and its output is read (or ``timeout`` s passed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended and self._process is not None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                self._take(self._lines.get(timeout=remaining if remaining is not None else 1.0))
            except queue.Empty:
                continue
        return self.state

    def cancel(self, grace_s: float = 1.5) -> None:
        """Stop the process tree: SIGTERM, then after ``grace_s`` seconds SIGKILL (Windows: kill).

        Returns when the process has ended. Nothing happens once it has ended by itself.
        """
        if self._process is None or self._ended:
            return
        self._cancelled = True
        _signal_tree(self._process, signal.SIGTERM)
        try:
            self._process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        # Also after a clean exit of the launcher: its child may still be cleaning up or hung.
        _signal_tree(self._process, getattr(signal, "SIGKILL", signal.SIGTERM))
        self._process.wait()
        _wait_for_group_end(self._process.pid, timeout=0.3)
        self.wait(timeout=0.3)  # the reader's last lines; the pipe closed with the tree


def _new_process_group() -> dict:
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def _wait_for_group_end(group: int, timeout: float) -> None:
    """Wait until no process of ``group`` is left (a killed process takes a moment to go).

    A zombie still counts as a member until its new parent reaps it, hence the time limit.
    """
    if os.name == "nt":
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def _signal_tree(process: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to ``process`` and every process of its group (Windows: end the tree)."""
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False)
        return
    try:
        os.killpg(process.pid, sig)  # start_new_session: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass
