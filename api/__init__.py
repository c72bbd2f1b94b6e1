"""The OpenAI-compatible HTTP API: a front server that turns requests into jobs on the broker."""
