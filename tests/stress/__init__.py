"""Long reliability runs (docs/reliability.md): `python -m tests.stress.<name>`, each printing its figures."""
