"""Desks: where citizens abroad prove who they are, and the staff who work there."""
