"""A chaos run's outcome as a table: the faults injected, then each invariant and whether it
held, with its first violations."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tests.chaos.faults import Fault
from tests.chaos.invariants import Verdict, shown


@dataclass
class ChaosReport:
    seed: int
    database: str
    seconds: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # what the storm did

    @property
    def held(self) -> bool:
        return bool(self.verdicts) and all(v.held for v in self.verdicts)

    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.held]

    def table(self) -> str:
        lines = [f"chaos run: seed {self.seed}, {self.database}, {self.seconds:.0f}s "
                 f"(replay: SAILPLANE_CHAOS_SEED={self.seed})"]
        lines.append("  " + ", ".join(f"{name} {count}" for name, count in self.counts.items()))
        lines += ["", f"{'fault injected':<34}{'count':>6}{'down s (mean)':>15}  errors"]
        by_kind: dict[tuple[str, str], list[Fault]] = defaultdict(list)
        for fault in self.faults:
            by_kind[(fault.kind, fault.target)].append(fault)
        for (kind, target), faults in sorted(by_kind.items()):
            mean = sum(f.down_seconds for f in faults) / len(faults)
            errors = sum(1 for f in faults if f.error)
            lines.append(f"{'SIGKILL ' + kind + ' (' + target + ')':<34}{len(faults):>6}"
                         f"{mean:>15.1f}  {errors}")
        lines += ["", f"{'invariant':<72}{'checked':>8}  result"]
        for verdict in self.verdicts:
            result = "held" if verdict.held else (
                "FAILED" if verdict.violations else "NOT EXERCISED")
            lines.append(f"{verdict.name:<72}{verdict.checked:>8}  {result}")
            lines += [f"    - {line}" for line in shown(verdict.violations)]
        return "\n".join(lines)
