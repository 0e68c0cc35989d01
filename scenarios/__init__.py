"""Scenarios (campaigns, stress, recommender adapters) as TOML files; filled in by the engine work."""
