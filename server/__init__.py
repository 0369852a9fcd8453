"""The triage server: configuration, services, pipeline, ESI rules engine and store."""

import os

# gRPC's C core reads this once, when grpc is first imported, and would write
# its INFO lines (connection noise) to stderr between our JSON log lines.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
