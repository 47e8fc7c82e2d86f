"""What ``doctor`` reports: a :class:`Finding` per thing found, and the :class:`DoctorReport`."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["DoctorReport", "Finding", "Severity"]

Severity = Literal["problem", "warning", "info"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor found.

    ``severity`` is ``problem`` (the lake is damaged: answers may be wrong or queries
    fail), ``warning`` (consistent, but something needs a step: a dead writer's log to
    publish, leftovers to clear, data lost earlier) or ``info``.
    """

    severity: Severity
    kind: str
    message: str
    path: str | None = None

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass(frozen=True)
class DoctorReport:
    """What :func:`check_lake` found and, with ``repair=True``, did.

    Attributes
    ----------
    lake
        The lake's directory.
    findings
        Everything found by the check (before any repair).
    repaired
        Whether repairs were attempted.
    actions
        What the repair did, one sentence each.
    lost
        What the lake lost, in plain words (the history rows of quarantined files, ...).
    after
        Findings of the check run again after the repair (``None`` without repair).
    quarantine
        The folder damaged files were moved to (``None`` if none were).
    files_checked, rows_checked
        How much was read.
    key_ids
        The ids of the encryption keys the lake's numbers are sealed with.
    """

    lake: Path
    findings: tuple[Finding, ...]
    repaired: bool = False
    actions: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    after: tuple[Finding, ...] | None = None
    quarantine: Path | None = None
    files_checked: int = 0
    rows_checked: int = 0
    key_ids: tuple[str, ...] = ()

    @property
    def problems(self) -> list[Finding]:
        """Problems that remain (after the repair, if one was made)."""
        final = self.findings if self.after is None else self.after
        return [f for f in final if f.severity == "problem"]

    @property
    def ok(self) -> bool:
        """Whether the lake is healthy (no problem remains; warnings allowed)."""
        return not self.problems

    def __repr__(self) -> str:
        n = {s: sum(f.severity == s for f in self.findings) for s in ("problem", "warning")}
        return (
            f"DoctorReport({str(self.lake)!r}, ok={self.ok}, problems={n['problem']}, "
            f"warnings={n['warning']}, files={self.files_checked}, repaired={self.repaired})"
        )

    def lines(self) -> list[str]:
        """The report as plain text lines."""
        verdict = "healthy" if self.ok else "NOT healthy"
        if self.repaired:
            found = sum(f.severity == "problem" for f in self.findings)
            verdict = f"{_plural(found, 'problem')} found; {verdict} after the repair"
        out = [
            f"lake {self.lake}: {verdict} ({self.files_checked:,} files, "
            f"{self.rows_checked:,} rows read)"
        ]
        if not self.findings:
            out.append("  nothing to report")
        out.extend(f"  {f}" for f in self.findings)
        if self.repaired:
            out.append("repair:")
            out.extend(f"  {a}" for a in self.actions or ("nothing to repair",))
            out.append("the lake lost:")
            out.extend(f"  {line}" for line in self.lost or ("nothing",))
            if self.after is not None:
                out.append("after the repair:")
                rest = [f for f in self.after if f.severity != "info"]
                out.extend(f"  {f}" for f in rest or ("no problems or warnings left",))
        elif not self.ok:
            out.append(f"run `kmsg-analytics doctor --lake {self.lake} --repair` to repair")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        colour = {"problem": "#b00020", "warning": "#a05a00", "info": "#555"}
        items = "".join(
            f'<li><span style="color:{colour[f.severity]}">{f.severity}</span>: '
            f"{html.escape(f.message)}</li>"
            for f in self.findings
        )
        verdict = "healthy" if self.ok else "not healthy"
        parts = [
            f"<h4>Lake <code>{html.escape(str(self.lake))}</code>: {verdict}</h4>",
            f"<p>{self.files_checked:,} files and {self.rows_checked:,} rows read.</p>",
            f"<ul>{items}</ul>" if items else "<p>Nothing to report.</p>",
        ]
        if self.repaired:
            acts = "".join(f"<li>{html.escape(a)}</li>" for a in self.actions)
            parts.append(f"<h5>Repair</h5><ul>{acts or '<li>nothing to repair</li>'}</ul>")
            if self.lost:
                lost = "".join(f"<li>{html.escape(x)}</li>" for x in self.lost)
                parts.append(f"<h5>Lost</h5><ul>{lost}</ul>")
        return "\n".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"
