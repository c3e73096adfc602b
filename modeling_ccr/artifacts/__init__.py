"""Files on disk: model folders, integrity records, checkpoints, original checkpoints, result records."""
