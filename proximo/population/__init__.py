"""Populations: K agents of one env trained as one batch in one process (proximo/population/trainer.py)."""
