"""Built-in model and cluster cards, shipped as package data of ``probe_planner`` (``probe_planner._cards``)."""
