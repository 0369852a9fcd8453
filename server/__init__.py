"""The triage server: configuration, services, pipeline, ESI rules engine and store."""

import os
from importlib.metadata import version

# gRPC's C core reads this once, when grpc is first imported, and would write
# its INFO lines (connection noise) to stderr between our JSON log lines.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# The installed package's version: callers read it in the x-server-version header, Prometheus in triage_build_info.
__version__ = version("triage-server")
