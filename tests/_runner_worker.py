"""A runner process for the two-process and kill tests of ``test_runner.py`` and
``test_failover.py`` (run as a script; importing it does nothing).

Modes::

    poll LAKE LOG GO [--batch N]
        Touch ``ready-<pid>`` beside LOG, wait for the file GO, then run ``run_once``
        until a run finds nothing due. Every status check appends the provider message
        id to LOG (one ``write`` each) and answers DELIVERED. Prints how many messages
        this process checked.
    kill LAKE MARK [--batch N]
        Run once (its checked ids go to ``acked`` beside MARK, after ``run_once``
        returned), then start a second run whose first check touches MARK and blocks
        forever: the parent SIGKILLs the process there.
    failover LAKE SENDLOG
        Run once; every check answers SOLAPI ``3104`` FAILED, and the failover sender
        appends the fallback's id to SENDLOG and then SIGKILLs its own process, between
        the send and the write of its outcome.

The clock stands at one hour after 2026-11-02T09:00Z, so every recorded send is due.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kmsg_analytics import DeliveryTrackingService, ParquetTrackingStore
from kmsg_analytics._providers import (
    ApiFailoverConfig,
    DeliveryStatusQuery,
    DeliveryStatusResult,
    PollingConfig,
)

HASH_KEY = "test-key-123"
NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def append_line(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


class Logging:
    """Answers DELIVERED and logs each check (a little slow, so runs overlap)."""

    id = "solapi"

    def __init__(self, log: Path) -> None:
        self.log = log
        self.count = 0

    def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult:
        append_line(self.log, query.provider_message_id)
        self.count += 1
        time.sleep(0.002)
        return DeliveryStatusResult(
            "solapi", query.provider_message_id, "DELIVERED", status_code="4000"
        )


class BlockSecondRun:
    """Answers DELIVERED in the first run; blocks forever in the second."""

    id = "solapi"

    def __init__(self, mark: Path) -> None:
        self.mark = mark
        self.blocking = False

    def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult:
        if self.blocking:
            self.mark.touch()
            threading.Event().wait()
        return DeliveryStatusResult(
            "solapi", query.provider_message_id, "DELIVERED", status_code="4000"
        )


class NotKakaoUser:
    id = "solapi"

    def get_delivery_status(self, query: DeliveryStatusQuery) -> DeliveryStatusResult:
        return DeliveryStatusResult(
            "solapi",
            query.provider_message_id,
            "FAILED",
            status_code="3104",
            status_message="카카오톡 미사용자",
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["poll", "kill", "failover"])
    parser.add_argument("lake")
    parser.add_argument("path")
    parser.add_argument("go", nargs="?")
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args(argv)
    store = ParquetTrackingStore(args.lake, hash_key=HASH_KEY)
    polling = PollingConfig(batch_size=args.batch, concurrency=4)
    path = Path(args.path)
    provider: Any
    if args.mode == "poll":
        provider = Logging(path)
        svc = DeliveryTrackingService([provider], store=store, polling=polling, clock=lambda: NOW)
        (path.parent / f"ready-{os.getpid()}").touch()
        while not Path(args.go).exists():
            time.sleep(0.005)
        while svc.run_once().due:
            time.sleep(0.1)  # a poller waits between runs: the other runner gets the lake
        svc.close()
        print(provider.count)
        return 0
    if args.mode == "kill":
        provider = BlockSecondRun(path)
        svc = DeliveryTrackingService([provider], store=store, polling=polling, clock=lambda: NOW)
        report = svc.run_once()
        acked = sorted(
            r.provider_message_id for r in store.list_due(NOW + timedelta(days=400), 1000)
        )
        done = [f"P-m{i:03d}" for i in range(20) if f"P-m{i:03d}" not in acked]
        (path.parent / "acked").write_text("\n".join(done) + "\n")
        assert report.written == len(done)
        provider.blocking = True
        svc.run_once()
        return 1  # never reached: killed while blocked

    def sender(send_input: Any, context: Any) -> None:
        append_line(path, send_input.message_id)
        os.kill(os.getpid(), signal.SIGKILL)

    svc = DeliveryTrackingService(
        [NotKakaoUser()],
        store=store,
        polling=polling,
        clock=lambda: NOW,
        api_failover=ApiFailoverConfig(sender),
    )
    svc.run_once()
    return 1  # never reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
