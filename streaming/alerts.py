"""Alert episodes per engine: normal -> pending -> firing -> (hysteresis) -> normal.

An engine goes pending when its score crosses the detector threshold (predicted RUL at or below it, or a
reconstruction error at or above it), fires after `consecutive` such cycles in a row, and is resolved only once the
score is back past the threshold by `hysteresis`. Each firing opens a new episode and yields exactly one alert; its
key (engine id + episode number) is the same whoever computes it, so a replayed alert is a recognisable duplicate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class AlertRule:
    threshold: float
    alarm_when_high: bool = False
    consecutive: int = 3
    hysteresis: float = 10.0

    @classmethod
    def from_detector(cls, detector: dict[str, Any], consecutive: int = 3, hysteresis: float | None = None
                      ) -> AlertRule:
        """The rule for a checkpoint's detector (manifest.preprocessing.detector). Default hysteresis: 10 cycles
        of RUL, or 10% of the threshold for a reconstruction error."""
        high = bool(detector["alarm_when_high"])
        margin = hysteresis if hysteresis is not None else (0.1 * detector["threshold"] if high else 10.0)
        return cls(float(detector["threshold"]), high, consecutive, margin)

    def in_alarm(self, score: float) -> bool:
        return score >= self.threshold if self.alarm_when_high else score <= self.threshold

    def cleared(self, score: float) -> bool:
        if self.alarm_when_high:
            return score < self.threshold - self.hysteresis
        return score > self.threshold + self.hysteresis

    def describe(self) -> str:
        """The rule in words, as the monitor states it on start."""
        t, k, margin = self.threshold, self.consecutive, self.hysteresis
        if self.alarm_when_high:
            return f"score >= {t:.3f} for {k} cycles, resolved when < {t - margin:.3f}"
        return f"score <= {t:.3f} for {k} cycles, resolved when > {t + margin:.3f}"

    def severity(self, score: float) -> str:
        far = score >= 2 * self.threshold if self.alarm_when_high else score <= 0.5 * self.threshold
        return "critical" if far else "warning"


@dataclass
class EngineState:
    state: str = "normal"  # normal | pending | firing
    streak: int = 0
    episode: int = 0
    last_cycle: int = 0


@dataclass(frozen=True)
class Alert:
    key: str
    engine_id: int
    episode: int
    cycle: int
    score: float
    severity: str
    event_time: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AlertStateMachine:
    rule: AlertRule
    engines: dict[int, EngineState] = field(default_factory=dict)

    def update(self, engine_id: int, cycle: int, score: float, event_time: float = 0.0) -> Alert | None:
        engine = self.engines.setdefault(engine_id, EngineState())
        engine.last_cycle = cycle
        if engine.state == "firing":
            if self.rule.cleared(score):
                engine.state, engine.streak = "normal", 0
            return None
        if not self.rule.in_alarm(score):
            engine.state, engine.streak = "normal", 0
            return None
        engine.streak += 1
        engine.state = "pending"
        if engine.streak < self.rule.consecutive:
            return None
        engine.state = "firing"
        engine.episode += 1
        return Alert(key=f"engine-{engine_id}-episode-{engine.episode}", engine_id=engine_id,
                     episode=engine.episode, cycle=cycle, score=round(float(score), 3),
                     severity=self.rule.severity(score), event_time=event_time)

    def state_of(self, engine_id: int) -> str:
        return self.engines.get(engine_id, EngineState()).state
