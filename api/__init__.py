"""The OpenAI-compatible API: FastAPI routes around the serving layer, auth, errors, metrics, files and batches.

app          the FastAPI app and its one producer (``create_app``)
context      what a route takes from its app and request: producer, request id, job observers
chat, completions, embeddings, routes, misc    the routes
streaming    the SSE response around a chunk stream
errors       every exception handler: OpenAI's error shape, never a stack trace
requestid    X-Request-Id and the one log line per request (requestlog)
auth, cors   API keys and CORS
metrics      /metrics: the job observer that records latencies and tokens, and the broker's state at scrape
files, batches    the Files and Batch APIs (their file store and rq queue are the batch wing's, :mod:`batch`)
"""
