"""The polling runner: run_once, start, stop (placeholder until the polling work lands)."""

from __future__ import annotations

__all__ = ["PollingMixin"]


class PollingMixin:
    """The polling half of :class:`DeliveryTrackingService`."""

    def stop(self) -> None:
        """Stop background polling (nothing runs yet); safe to call twice."""
