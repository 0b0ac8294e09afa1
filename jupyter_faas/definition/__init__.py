"""Cell and def to an immutable, content-hashed definition: capture, signature, limits, secrets, requirements."""
