"""The batch wing: OpenAI's Batch API run offline by rq workers, on the models' low-priority streams.

queue      the rq queue of batch runs: enqueue a run, take a queued one off (used by the API's routes too)
runner     runs one batch (the rq job): feeds its lines through the serving layer, writes the result files
worker     ``queuechat batch-worker``: rq's in-process worker, the orphan scan, a warm stop
filestore  batch files on disk: uploads under a size limit, input lines validated, results appended durably
main       the ``batch-worker`` command

Batch records (files, batches, leases) are read and written only through :mod:`broker.batches`.
"""
