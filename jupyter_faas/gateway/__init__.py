"""The HTTP service, its Tornado handlers, OpenAPI, metrics, the server extension, serve and triggers."""
