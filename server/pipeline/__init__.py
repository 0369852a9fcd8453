"""The triage pipeline: ESI decision points as steps, each answered by a backend."""
