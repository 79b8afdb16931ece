"""Which backend serves a request: the pool (choice, health, admission), the router (failover)."""
