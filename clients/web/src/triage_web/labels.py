"""How the API's values read on a page: levels, steps, roles and states in words; money and times."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from google.protobuf.timestamp_pb2 import Timestamp

from triage.v1 import admin_service_pb2, classification_pb2
from triage_client import DeadlineExceeded, TriageError, Unavailable


class Level:
    """An ESI level as a person reads it: its number, name, meaning, and a CSS class for its colour."""

    def __init__(self, number: int, name: str, meaning: str) -> None:
        self.number = number
        self.name = name
        self.meaning = meaning
        self.css = f"level-{number}"


LEVELS = {
    1: Level(1, "Resuscitation", "needs an immediate life-saving intervention"),
    2: Level(2, "Emergent", "a high-risk situation, new confusion, lethargy or disorientation, or severe pain"),
    3: Level(3, "Urgent", "stable, and expected to need two or more resources"),
    4: Level(4, "Less urgent", "stable, and expected to need one resource"),
    5: Level(5, "Non-urgent", "stable, and expected to need no resources"),
}

STEPS = {
    classification_pb2.STEP_LIFE_SAVING: "A. Life-saving intervention",
    classification_pb2.STEP_HIGH_RISK: "B. High risk",
    classification_pb2.STEP_RESOURCES: "C. Resources",
    classification_pb2.STEP_DANGER_ZONE_VITALS: "D. Danger-zone vital signs",
    classification_pb2.STEP_REVIEW: "Review",
    classification_pb2.STEP_NARRATIVE: "Narrative",
}

RESOURCES = {
    value: name.removeprefix("RESOURCE_KIND_").replace("_", " ").capitalize().replace("Ecg", "ECG").replace("Iv", "IV")
    for name, value in classification_pb2.ResourceKind.items()
    if value
}

# The steps an administrator routes (runtime configuration) and what each is called.
CONFIG_STEPS = {"high_risk": "B. High risk", "resources": "C. Resources", "narrative": "Explain narrative"}

STRATEGIES = {
    admin_service_pb2.STRATEGY_RULES: ("rules", "Rules: the rules engine's answer"),
    admin_service_pb2.STRATEGY_MODEL: ("model", "Model: the backend's answer, never below a hard rule"),
    admin_service_pb2.STRATEGY_MOST_URGENT: ("most_urgent", "Most urgent of the backend's and the rules' answers"),
}

DANGER_ZONE = {
    admin_service_pb2.DANGER_ZONE_POLICY_UP_TRIAGE: ("up_triage", "Up-triage to ESI 2"),
    admin_service_pb2.DANGER_ZONE_POLICY_FLAG_ONLY: ("flag_only", "Keep ESI 3 and flag it"),
    admin_service_pb2.DANGER_ZONE_POLICY_LEARNED: ("learned", "Up-triage when the learned estimate says so"),
}

ROLES = {
    admin_service_pb2.ROLE_DEMO: "demo",
    admin_service_pb2.ROLE_CLINICIAN: "clinician",
    admin_service_pb2.ROLE_SERVICE: "service",
    admin_service_pb2.ROLE_ADMIN: "admin",
}
for _name, _value in admin_service_pb2.Role.items():
    if _value and _value not in ROLES:  # roles the contract gained later, such as gateway
        ROLES[_value] = _name.removeprefix("ROLE_").lower()

CIRCUITS = {
    admin_service_pb2.CIRCUIT_STATE_UNSPECIFIED: "no circuit breaker",
    admin_service_pb2.CIRCUIT_STATE_CLOSED: "closed (calls go through)",
    admin_service_pb2.CIRCUIT_STATE_OPEN: "open (calls refused after failures)",
    admin_service_pb2.CIRCUIT_STATE_HALF_OPEN: "half-open (a trial call goes through)",
}

MICROS = Decimal(1_000_000)


def usd(micros: int) -> str:
    """Millionths of a dollar as dollars: 20000000 -> 20.00, 1234 -> 0.001234."""
    whole, _, fraction = f"{(Decimal(micros) / MICROS).normalize():f}".partition(".")
    return f"{int(whole):,}.{fraction.ljust(2, '0')}"


def usd_input(micros: int) -> str:
    """Dollars as an input's value (no thousands separators)."""
    return usd(micros).replace(",", "")


def micros_of(text: str) -> int | None:
    """Dollars typed in a form as millionths of a dollar; None when it is not an amount >= 0."""
    try:
        amount = Decimal(text.strip().replace(",", "").removeprefix("$"))
        # quantize raises for amounts too large for the context (about 1e22 and up).
        if not amount.is_finite() or amount < 0 or amount != amount.quantize(Decimal("0.000001")):
            return None
    except InvalidOperation:
        return None
    micros = int(amount * MICROS)
    return micros if micros < 2**63 else None


def when(stamp: Timestamp) -> str:
    """A timestamp as UTC, to the second; empty when unset."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def day(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d")


def clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%H:%M UTC")


def duration(seconds: float) -> str:
    """A wait in words: '3 h 12 min', '45 s'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min" + (f" {secs} s" if secs else "")
    return f"{secs} s"


def unavailable_message(error: TriageError) -> str:
    """What to tell a person when the gRPC server failed a call."""
    if isinstance(error, Unavailable | DeadlineExceeded):
        return "The triage service is not answering. Try again in a moment."
    return f"The triage service answered with an error ({error.code.name})."
