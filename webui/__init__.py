"""The chat web UI: a Gradio front server that submits jobs through broker's producer (no HTTP hop).

settings  what an operator can tune (limits, log directory, model-list mode)
chat      conversations and their replies, independent of any widget
messages  what a person reads when something goes wrong, and what they can do about it
status    live workers and queue depth per model
votes     the per-day JSON-lines log of votes and flags
app       the Gradio Blocks (Chat, Compare, the status strip) and mounting into the API
main      ``queuechat webui`` / ``python -m webui``
"""
