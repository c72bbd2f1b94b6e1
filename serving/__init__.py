"""The serving layer: what every front end does with an OpenAI request, with no HTTP framework and no metrics inside.

The API's routes, the batch runner and the web UI all go through it, so a request is translated, submitted and
answered one way wherever it comes from.

requests     OpenAI request bodies, validated strictly, and the jobs they become (``to_job``, ``to_jobs``)
messages     chat messages and content parts
tools        function calling: forced-call schemas, calls read back from text
jobs         submit a request's jobs, merge their events, collect an answer; the observer hook (metrics, logs)
chat         chat completions, whole or as a chunk stream
completions  text completions, whole or as a chunk stream
embeddings   embeddings
models       the live model list
logprobs     log-probabilities in OpenAI's two shapes
streams      the data lines of an OpenAI stream (chunks, an error chunk, ``[DONE]``)
errors       OpenAI's error body and how a validation failure reads in it
"""
