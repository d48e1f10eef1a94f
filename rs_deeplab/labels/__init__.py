"""Classes: names, palettes and label encodings of every dataset, and label pixels decoded to class ids."""
