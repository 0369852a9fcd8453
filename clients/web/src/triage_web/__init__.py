"""The web tier of the ED triage service: the public demo and the admin console, a client of the gRPC API."""
