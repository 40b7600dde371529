"""Loss landscapes around a checkpoint: 1-D and 2-D slices along chosen directions."""
