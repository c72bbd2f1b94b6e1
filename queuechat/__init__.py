"""The ``queuechat`` command: one entry point for every process of the system."""
