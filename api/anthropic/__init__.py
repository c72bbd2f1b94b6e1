"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) in front of the same job queue.

A Messages request is translated into a chat completion request (:mod:`api.anthropic.translate`), so it is
validated, queued and generated exactly like one; the answer and its stream are translated back into Anthropic's
shapes, and errors on these paths leave in Anthropic's error shape (:mod:`api.anthropic.errors`).
"""
