"""Access control: API keys, request-rate limits, token budgets and stream caps."""
