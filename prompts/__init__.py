"""Jinja2 prompt templates; installed as the package ``discovery.prompting.templates``."""
