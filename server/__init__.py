"""The triage server: configuration, services, pipeline, ESI rules engine and store."""
