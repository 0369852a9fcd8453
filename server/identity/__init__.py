"""Who is calling: API keys and OIDC tokens."""
