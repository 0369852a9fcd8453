"""Typed Python client for the ED triage service.

    from triage_client import TriageClient, TriageCase

    case = TriageCase(chief_complaint="chest pain", case_ref="enc-123")
    case.age.years = 67
    case.vitals.heart_rate_bpm = 110
    with TriageClient() as client:
        print(client.classify(case).esi_level)

The messages are the generated ones of `triage.v1`, re-exported here.
"""

from triage.v1.admin_service_pb2 import AuditEvent
from triage.v1.case_pb2 import Age, ArrivalMode, Avpu, RiskFactor, Sex, TriageCase, Vitals
from triage.v1.classification_pb2 import (
    Classification,
    EsiLevel,
    Finding,
    PredictedResource,
    ResourceKind,
    Step,
    Warning,
)
from triage.v1.explain_service_pb2 import ExplainResponse, StepEvent
from triage_client.client import AsyncTriageClient, Deadlines, ServingStatus, TriageClient, tls_credentials
from triage_client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    TriageError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_rpc_error,
)
from triage_client.rate_limit import RateLimit

__all__ = [
    "Aborted",
    "Age",
    "AlreadyExists",
    "ArrivalMode",
    "AsyncTriageClient",
    "AuditEvent",
    "Avpu",
    "Cancelled",
    "Classification",
    "DataLoss",
    "DeadlineExceeded",
    "Deadlines",
    "EsiLevel",
    "ExplainResponse",
    "FailedPrecondition",
    "Finding",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PredictedResource",
    "RateLimit",
    "ResourceExhausted",
    "ResourceKind",
    "RiskFactor",
    "ServingStatus",
    "Sex",
    "Step",
    "StepEvent",
    "TriageCase",
    "TriageClient",
    "TriageError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "Vitals",
    "Warning",
    "from_rpc_error",
    "tls_credentials",
]
