"""Leaf of the gateway: the error tree and the typed objects; imports neither Flask nor requests."""
