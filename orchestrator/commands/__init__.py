"""The ``orch`` commands beside ``cli.py``: each parses, calls the service layer, shows with ``render``."""
