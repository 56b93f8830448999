"""A project's quality settings: its rules, when annotators disagree too much, and its gold policy.

Stored in `Project.settings["quality"]` (see quality/models.py for why), checked as a whole on
every change: each problem is reported with its path, as label schemas and rules are.

```json
{
  "rules": [{"rule": "size", "severity": "blocking", "classes": ["car"], "min_area": 100}],
  "agreement": {"min_agreement": 0.6, "match_at": 0.5, "consensus": "dawid_skene", "shrinkage": 20},
  "gold": {"min_accuracy": 0.8, "min_answers": 5, "window": 20, "action": "flag"}
}
```
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from labeling.regions.spec import Problems, Schema, is_number, show_value
from quality.rules import Rule, RulesInvalid, parse_rules

CONSENSUS_METHODS = ("majority", "dawid_skene")
GOLD_ACTIONS = ("flag", "pause")


@dataclass(frozen=True)
class AgreementPolicy:
    # A task whose annotators agree less than this (mean pairwise agreement, 0..1) is flagged
    # and goes to review.
    min_agreement: float = 0.6
    # Two regions at least this similar (IoU, OKS, text similarity) are the same object.
    match_at: float = 0.5
    # How k classifications become one: a plain vote, or weighted by each annotator's estimated
    # reliability (Dawid-Skene, fitted over the whole project by the agreement job).
    consensus: str = "dawid_skene"
    # Pseudo-answers pulling each annotator's confusion matrix toward a single accuracy (see
    # quality.metrics.consensus.dawid_skene); 0 is the classic model.
    shrinkage: float = 20.0


@dataclass(frozen=True)
class GoldPolicy:
    # An annotator whose mean score over their last `window` gold answers falls below this, once
    # they gave at least `min_answers`, is flagged, or paused (`action`).
    min_accuracy: float = 0.8
    min_answers: int = 5
    window: int = 20
    action: str = "flag"


@dataclass(frozen=True)
class QualitySettings:
    rules: list[dict[str, Any]] = field(default_factory=list)
    agreement: AgreementPolicy = AgreementPolicy()
    gold: GoldPolicy = GoldPolicy()

    def as_json(self) -> dict[str, Any]:
        return {"rules": self.rules, "agreement": asdict(self.agreement), "gold": asdict(self.gold)}


def settings_of(project_settings: dict[str, Any] | None) -> QualitySettings:
    """The stored settings (checked when they were saved), with defaults for what is left out."""
    stored = (project_settings or {}).get("quality") or {}
    return QualitySettings(
        rules=list(stored.get("rules") or []),
        agreement=AgreementPolicy(**(stored.get("agreement") or {})),
        gold=GoldPolicy(**(stored.get("gold") or {})),
    )


def parse_settings(raw: Any, *, schema: Schema | None) -> QualitySettings:
    """Check a complete settings document; RulesInvalid lists every problem with its path."""
    problems = Problems()
    if not isinstance(raw, dict):
        raise RulesInvalid(
            [{"path": "", "code": "invalid", "message": "Quality settings are a JSON object."}]
        )
    for key in sorted(set(raw) - {"rules", "agreement", "gold"}):
        problems.add(key, "unknown_key", f"Unknown setting {show_value(key)}: use rules, agreement or gold.")
    errors: list[dict[str, str]] = []
    rules_raw = raw.get("rules", [])
    try:
        parse_rules(rules_raw, schema=schema)
    except RulesInvalid as exc:
        errors.extend({**e, "path": f"rules{_sub(e['path'])}"} for e in exc.errors)
    agreement = _section(raw, "agreement", AgreementPolicy, problems)
    gold = _section(raw, "gold", GoldPolicy, problems)
    if agreement is not None:
        _fraction(agreement.min_agreement, "agreement.min_agreement", problems, zero_ok=True)
        _fraction(agreement.match_at, "agreement.match_at", problems, zero_ok=False)
        if not is_number(agreement.shrinkage) or not 0 <= agreement.shrinkage <= 10_000:
            problems.add("agreement.shrinkage", "invalid", "agreement.shrinkage is a number from 0 to 10000.")
        if agreement.consensus not in CONSENSUS_METHODS:
            problems.add(
                "agreement.consensus", "invalid", f"consensus is one of {', '.join(CONSENSUS_METHODS)}."
            )
    if gold is not None:
        _fraction(gold.min_accuracy, "gold.min_accuracy", problems, zero_ok=True)
        for name, least in (("min_answers", 1), ("window", 1)):
            value = getattr(gold, name)
            if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 10_000:
                problems.add(
                    f"gold.{name}", "invalid", f"gold.{name} is a whole number from {least} to 10000."
                )
        if gold.action not in GOLD_ACTIONS:
            problems.add("gold.action", "invalid", f"gold.action is one of {', '.join(GOLD_ACTIONS)}.")
    errors.extend(problems.errors)
    if errors:
        raise RulesInvalid(errors)
    assert agreement is not None and gold is not None
    return QualitySettings(rules=list(rules_raw), agreement=agreement, gold=gold)


def _sub(path: str) -> str:
    return path if path.startswith("[") or not path else f".{path}"


def _section(raw: dict[str, Any], name: str, kind: type[Any], problems: Problems) -> Any:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        problems.add(name, "invalid", f"{name} is a JSON object.")
        return None
    known = set(kind.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    for key in unknown:
        problems.add(f"{name}.{key}", "unknown_key", f"Unknown setting {show_value(key)} in {name}.")
    return kind(**{k: v for k, v in value.items() if k in known})


def _fraction(value: Any, path: str, problems: Problems, *, zero_ok: bool) -> None:
    if not is_number(value) or not (0 <= value <= 1) or (value == 0 and not zero_ok):
        problems.add(path, "invalid", f"{path} is a number from {0 if zero_ok else 'above 0'} to 1.")


@lru_cache(maxsize=256)
def _rules_from_json(text: str) -> tuple[Rule, ...]:
    return tuple(parse_rules(json.loads(text), schema=None))


def rules_of(settings: QualitySettings) -> tuple[Rule, ...]:
    """The parsed rules (checked when saved; cached by their text: this runs on every submit)."""
    if not settings.rules:
        return ()
    return _rules_from_json(json.dumps(settings.rules, sort_keys=True))
