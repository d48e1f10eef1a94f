"""Scripts the tests launch as real processes (torchrun workers and the like)."""
