from queuechat.cli import app

app()
