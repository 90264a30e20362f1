"""The DiT, its attention masks, token layouts and KV caches."""
