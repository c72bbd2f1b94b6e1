"""The chat web UI: a Gradio front server that builds its requests with the serving layer and submits them through
broker's producer (no HTTP hop). It knows nothing of the API; :mod:`queuechat.compose` mounts it there.

settings  what an operator can tune (limits, log directory, model-list mode)
chat      conversations and their replies, independent of any widget
messages  what a person reads when something goes wrong, and what they can do about it
status    live workers and queue depth per model
votes     the per-day JSON-lines log of votes and flags
backend   what every handler shares: settings, the process's producer, the vote log, the model list
app       the Gradio Blocks (Chat, Compare, the status strip)
mount     serving the Blocks under a path of a FastAPI app
main      ``queuechat webui`` / ``python -m webui``
"""
