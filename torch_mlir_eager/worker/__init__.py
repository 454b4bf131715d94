"""The compile worker: its protocol (both sides), the host's client, and the server that runs in the child."""
