"""What the notebook holds: the function object, the magic, deployment and history."""
