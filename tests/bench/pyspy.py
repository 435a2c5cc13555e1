"""Optional: where the server's CPU goes, sampled with py-spy while measured (``run.py --profile DIR``).

py-spy is not a dependency of the project: install it into the venv to use this
(``.venv/bin/pip install py-spy``). It samples from outside without stopping the process
(``--nonblocking``), so the figures measured alongside stay close to an unprofiled run.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE_HZ = 250
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Frames every sample passes through (interpreter start, event loop, entry points):
# left out of the inclusive view.
_PLUMBING = (
    "<frozen",
    "asyncio/",
    "processor/cli.py",
    "processor/__main__.py",
    "threading.py",
    "__main__.py",
)


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


class Sampler:
    def __init__(self, pid: int, out: Path):
        executable = py_spy()
        if executable is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.out = out
        self.popen = subprocess.Popen(
            [
                executable,
                "record",
                "-p",
                str(pid),
                "-o",
                str(out),
                "--format",
                "raw",
                "-r",
                str(RATE_HZ),
                "--nonblocking",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        """py-spy writes its file on SIGINT."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            _, err = self.popen.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, err = self.popen.communicate(timeout=5)
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace').strip()[-500:]}")


def _short(frame: str, with_line: bool) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['function']} ({path}{':' + m['line'] if with_line and m['line'] else ''})"


def summarize(raw: Path, top: int = 12) -> str:
    """Top functions by self time and by inclusive time.

    Self time is per source line: time in C (protobuf, regex) counts to the Python line that calls it.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for text in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(text)
        if not m:
            continue
        count = int(m["count"])
        frames = [f for f in m["stack"].split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[_short(frames[-1], with_line=True)] += count
        for name in {_short(f, with_line=False) for f in frames}:
            if not name.split(" (", 1)[-1].startswith(_PLUMBING):
                inclusive[name] += count
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples; self time by line:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive time by function (event loop and entry points left out):")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)
