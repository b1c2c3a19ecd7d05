"""The Tasks service: containers' running processes, through runtime v2."""
