# ``python -m api`` is ``queuechat api``: the command lives in the composition root, which can mount the web UI.
from queuechat.apiserver import main

main()
