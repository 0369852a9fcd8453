"""Persistence: SQLModel tables on SQLite (default) or PostgreSQL."""
