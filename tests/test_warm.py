"""tests/warm.py: a script started warm behaves as `python SCRIPT` does.

A small script (no TensorFlow) runs both ways, in each of the ways a process
can end, and what a test can see of it must agree: exit status, stdout,
stderr's last line, what the script saw of its argv, cwd, environment, stdin
and sys.path, and that atexit functions and non-daemon threads ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import warm

_SCRIPT = textwrap.dedent(
    """
    import atexit, os, signal, sys, threading, time

    mode = sys.argv[1]
    print("argv", sys.argv[1:], "cwd", os.getcwd(), "env", os.environ.get("WARM_PROBE"))
    print("path0", sys.path[0], "stdin", repr(sys.stdin.read()), "main", __name__)
    print("to stderr", file=sys.stderr)
    atexit.register(lambda: print("atexit ran", flush=True))
    threading.Thread(target=lambda: (time.sleep(0.1), print("thread ended", flush=True))).start()
    if mode == "exit3":
        sys.exit(3)
    if mode == "message":
        sys.exit("a message")
    if mode == "raise":
        raise ValueError("boom")
    if mode == "interrupt":
        raise KeyboardInterrupt
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    """
)
MODES = ["ok", "exit3", "message", "raise", "interrupt", "sigkill"]


@pytest.mark.parametrize("mode", MODES)
def test_a_warm_process_ends_as_a_new_interpreter_does(mode, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(_SCRIPT)
    (tmp_path / "cwd").mkdir()
    args = [str(script), mode, "x y"]
    env = dict(os.environ, WARM_PROBE="seen")
    cold = subprocess.run(
        [sys.executable, *args], cwd=tmp_path / "cwd", env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )
    hot = warm.run(args, cwd=tmp_path / "cwd", env=env, timeout=60)

    assert hot.returncode == cold.returncode, (hot.stderr, cold.stderr)
    assert hot.stdout == cold.stdout
    assert hot.stderr.splitlines()[-1] == cold.stderr.splitlines()[-1]
    assert ("Traceback" in hot.stderr) == ("Traceback" in cold.stderr)
    expected = {"ok": 0, "exit3": 3, "message": 1, "raise": 1, "interrupt": -signal.SIGINT, "sigkill": -signal.SIGKILL}
    assert hot.returncode == expected[mode]
    if mode != "sigkill":
        assert f"argv ['{mode}', 'x y'] cwd {tmp_path / 'cwd'} env seen" in hot.stdout
        assert f"path0 {tmp_path} stdin '' main __main__" in hot.stdout
        assert hot.stdout.endswith("thread ended\natexit ran\n")


def test_lines_follow_the_output_and_stderr_can_join_it(tmp_path):
    script = tmp_path / "count.py"
    script.write_text("import sys\nfor i in range(3):\n    print(i)\n    print('e', i, file=sys.stderr)\n")
    with warm.start([script], merge_stderr=True) as proc:
        lines = list(proc.lines())
    assert proc.returncode == 0
    assert lines == ["0\n", "e 0\n", "1\n", "e 1\n", "2\n", "e 2\n"]
