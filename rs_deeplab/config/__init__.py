"""What a run and a model are described by: the experiment config, its loss spec and model choices, the model card.

The bottom layer: nothing here imports torch at import time (the model card reads checkpoints with it, lazily).
"""
