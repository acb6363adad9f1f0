"""Development and test tooling: the local PostgreSQL/Redis/NATS/CQL stack and the dev CA.

Not part of the runtime and not copied into the image.
"""
