"""The shared kernel: domain types, settings, database and audit. Imports nothing of ours."""
