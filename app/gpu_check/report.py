"""What the GPU check found: the timed rows, the checks, and the printed tables."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .plan import DeviceInfo

# --------------------------------------------------------------------------- results


@dataclass
class Row:
    model: str
    step: str
    dtype: str
    tokens: int | None = None
    seconds: float | None = None
    flops: float | None = None
    peak_memory: int | None = None
    note: str = ""

    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds else None


@dataclass
class Check:
    model: str
    name: str
    ok: bool
    detail: str


@dataclass
class CheckReport:
    device: DeviceInfo
    tiny: bool
    plan: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    estimate_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def mfu(self, row: Row) -> float | None:
        if row.flops is None or not row.seconds or self.device.peak_flops is None:
            return None
        return row.flops / row.seconds / self.device.peak_flops

    def table(self) -> str:
        lines = ["| model | step | dtype | tokens | seconds | tokens/s | MFU | peak GPU mem |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            mfu = self.mfu(r)
            tps = r.tokens_per_second()
            lines.append(
                f"| {r.model} | {r.step}{' (' + r.note + ')' if r.note else ''} | {r.dtype} | "
                f"{'' if r.tokens is None else format(r.tokens, ',')} | {'' if r.seconds is None else format(r.seconds, '.2f')} | "
                f"{'' if tps is None else format(tps, ',.0f')} | {'–' if mfu is None else format(100 * mfu, '.1f') + '%'} | "
                f"{'–' if r.peak_memory is None else format(r.peak_memory / 2**30, '.2f') + ' GiB'} |"
            )
        return "\n".join(lines)

    def checks_table(self) -> str:
        lines = ["| model | check | result | detail |", "|---|---|---|---|"]
        lines += [f"| {c.model} | {c.name} | {'PASS' if c.ok else 'FAIL'} | {c.detail} |" for c in self.checks]
        return "\n".join(lines)

    def summary(self) -> str:
        failed = [c for c in self.checks if not c.ok]
        head = f"{len(self.checks) - len(failed)}/{len(self.checks)} checks passed"
        return head + ("" if not failed else "; FAILED: " + ", ".join(f"{c.model}/{c.name}" for c in failed))

    def to_json(self) -> dict[str, Any]:
        return {
            "device": {
                "name": self.device.name,
                "type": self.device.device.type,
                "peak_flops": self.device.peak_flops,
                "peak_source": self.device.peak_source,
                "memory_bytes": self.device.memory_bytes,
            },
            "tiny": self.tiny,
            "ok": self.ok,
            "seconds": self.seconds,
            "estimate_seconds": self.estimate_seconds,
            "plan": self.plan,
            "rows": [{**asdict(r), "tokens_per_second": r.tokens_per_second(), "mfu": self.mfu(r)} for r in self.rows],
            "checks": [asdict(c) for c in self.checks],
        }


def print_report(report: CheckReport, say: Callable[[str], None] = print) -> None:
    say("")
    say(report.table())
    say("")
    say(report.checks_table())
    say("")
    rss = None
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    except Exception:  # noqa: BLE001 - not on every platform
        pass
    say(
        f"{report.summary()}; wall time {report.seconds:.1f} s (estimated {report.estimate_seconds:.0f} s)"
        + (f"; peak host RSS {rss:.2f} GiB" if rss else "")
    )
