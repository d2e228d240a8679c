"""Reading scans: finding files, decoding TIFFs lazily, vendor metadata, the data bar, datasets."""
