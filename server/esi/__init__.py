"""The ESI rules engine: clinical tables (data/) read by small code."""
