"""The one rendering package of ``orch``: tables, JSON and YAML output, the live ``top``."""
