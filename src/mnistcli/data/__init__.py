"""Images in: the dataset registry, IDX files, image folders, decoding, the input spec, the one image pipeline,
subsets and loaders, and the data store that checks and imports official files."""
