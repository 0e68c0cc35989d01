"""twinsim recommend: policies under test on the same customers, side by side (docs/recommenders.md)."""
