"""Generated from proto/triage/v1 by clients/python/gen_protos.py. Do not edit."""
