"""Channel plugins (how agents and the human talk): ``matrix`` is the default."""
