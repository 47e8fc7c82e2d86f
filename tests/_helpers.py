"""Test helpers: a named gateway, k-msg-shaped sends, quiet lakes, the crash writer."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kmsg_analytics import ParquetTrackingStore
from tests._model import TEST_KEY

#: The script the crash tests run and kill (see its docstring for its output).
CRASH_WRITER = Path(__file__).with_name("_crash_writer.py")
#: k-msg's own table definitions, a database its service wrote and its answers over it
#: (see the README there).
KMSG_FIXTURES = Path(__file__).with_name("fixtures") / "kmsg"
#: The recipient of :func:`send_pair` unless another is given.
NUMBER = "010-1234-5678"


class Gateway:
    """A provider that can only be named (recording and queries never call it)."""

    def __init__(self, provider_id: str = "solapi") -> None:
        self.id = provider_id


def send_pair(
    message_id: str,
    requested: datetime,
    *,
    kind: str = "SMS",
    pmid: str | None = None,
    sender: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A k-msg-shaped (context, result) pair of one send to :data:`NUMBER` through solapi.

    The provider message id is ``G-<message_id>`` unless ``pmid`` is given; the context
    names a sending number only when ``sender`` is given.
    """
    options = {"type": kind, "to": NUMBER}
    if sender is not None:
        options["from"] = sender
    context = {"messageId": message_id, "timestamp": requested.isoformat(), "options": options}
    result = {
        "messageId": message_id,
        "providerId": "solapi",
        "providerMessageId": f"G-{message_id}" if pmid is None else pmid,
        "type": kind,
        "to": NUMBER,
    }
    return context, result


def quiet_lake(path: Path, **options: Any) -> ParquetTrackingStore:
    """A lake that publishes only when told to (no timer, no size trigger)."""
    return ParquetTrackingStore(
        path, hash_key=TEST_KEY, flush_rows=1_000_000, flush_seconds=3600, **options
    )


def record_answers(svc: Any, day0: datetime) -> tuple[object, ...]:
    """What the merge tests compare between stores: counts (all, and of the day from
    ``day0``), counts by status, every record's id, status and requested time, and the
    ids of the day.
    """
    day: dict[str, Any] = {"requested_at_from": day0, "requested_at_to": day0 + timedelta(hours=23)}
    return (
        svc.count_records(),
        svc.count_records(**day),
        svc.count_by(group_by=["status"]).collect().rows(),
        sorted(svc.list_records().select("message_id", "status", "requested_at").collect().rows()),
        sorted(svc.list_records(**day).select("message_id").collect().to_series().to_list()),
    )


# --------------------------------------------------------------------------- the crash writer


def start_writer(lake: Path, log: Path, *args: str) -> subprocess.Popen[str]:
    """Start :data:`CRASH_WRITER` on ``lake`` (its stderr appended to ``log``)."""
    with log.open("a") as err:
        return subprocess.Popen(
            [sys.executable, str(CRASH_WRITER), str(lake), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def complete_lines(text: str) -> list[str]:
    """The whole lines of a stream's remainder (a torn last line was never acknowledged)."""
    return text.split("\n")[:-1]


#: Called with each line the writer prints and the number of ids acknowledged so far.
Stop = Callable[[str, int], bool]


def run_writer_until(
    lake: Path, log: Path, seed: int, stop: Stop, *extra: str, limit: int = 30_000
) -> list[str]:
    """Run the writer until ``stop(line, n_acked)``, SIGKILL it, return every acknowledged id."""
    proc = start_writer(lake, log, "--seed", str(seed), "--prefix", f"s{seed}", *extra)
    assert proc.stdout is not None
    acked: list[str] = []
    stopped = False
    try:
        for line in proc.stdout:
            if not line.endswith("\n"):
                break
            line = line[:-1]
            if not line.startswith("#"):
                acked.append(line)
            if stop(line, len(acked)):
                stopped = True
                break
            if len(acked) > limit:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()
    assert stopped, (
        f"the writer never reached the kill point; see {log}:\n{log.read_text()[-2000:]}"
    )
    assert proc.returncode == -signal.SIGKILL
    # lines printed between our last read and the kill were acknowledged too
    acked.extend(line for line in complete_lines(rest) if not line.startswith("#"))
    return acked


def after_acks(n: int) -> Stop:
    """Stop once ``n`` ids are acknowledged."""
    return lambda line, acked: acked >= n


def mid_fold(min_acked: int, min_partitions: int) -> Stop:
    """Stop (after ``min_acked`` ids) inside a fold of at least ``min_partitions`` current
    partitions, when about half of them are replaced."""

    def stop(line: str, acked: int) -> bool:
        if acked < min_acked or not line.startswith("#folding"):
            return False
        done, _, total = line.rpartition("(")[2].rstrip(")").partition("/")
        return int(total) >= min_partitions and int(done) == int(total) // 2 + 1

    return stop


def mid_merge(min_acked: int) -> Stop:
    """Stop (after ``min_acked`` ids) when a merge of history files begins."""
    return lambda line, acked: acked >= min_acked and line.startswith("#merging history")
