"""Step backends beyond the rules engine: models behind OpenAI-compatible APIs."""
