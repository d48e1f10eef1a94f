"""Sliding-window inference over whole scenes: window batches, blended probabilities, streamed writes, CRF."""
