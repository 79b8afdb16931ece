"""State every worker and replica shares through Redis, or keeps in this process without it."""
