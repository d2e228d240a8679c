"""Who owns a temporary: host, process id and process start time, so a later run can tell a dead writer's."""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path

__all__ = ["host_name", "process_start", "temporary_name", "process_alive"]


def host_name() -> str:
    """This host's name, safe inside file names."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"


def process_start(pid: int) -> int:
    """The process's start time in clock ticks since boot (Linux); 0 where it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def temporary_name(kind: str, host: str | None = None, pid: int | None = None, start: int | None = None) -> str:
    """The name of a temporary of this process (or of the writer given)."""
    pid = os.getpid() if pid is None else pid
    start = process_start(pid) if start is None else start
    return f"{kind}~{host or host_name()}~{pid}~{start}~{uuid.uuid4().hex[:12]}"


def process_alive(pid: int, start: int = 0) -> bool | None:
    """Whether process ``pid`` (started at ``start``, 0: unknown) of this host runs; None where that cannot be told."""
    if os.name != "posix":
        return None
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process
        except OSError:
            return None
    now = process_start(pid)
    return not (start and now and now != start)
