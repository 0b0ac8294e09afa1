"""Records, cost, the durable log, the registry, dead letters and the in-flight journal."""
