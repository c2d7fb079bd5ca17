"""The review queue: study and finding states, radiologists' decisions, sign-off; API routes."""
