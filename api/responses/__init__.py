"""OpenAI's Responses API (``/v1/responses``) in front of the same job queue.

A Responses request is translated into a chat completion request (:mod:`api.responses.translate`), so it is
validated, queued and generated exactly like one; the answer and its stream come back as a Response object and
the Responses stream events (:mod:`api.responses.stream_events`). Stored responses (``store``, the default) live
in Redis (:mod:`broker.responses`) for ``GET``, ``DELETE``, ``input_items``, ``previous_response_id`` and
background runs.
"""
