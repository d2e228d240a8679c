"""Running bioimage.io packages with semtile: the pass (:mod:`.passes`), the package's weights on semtile's engines
(:mod:`.runners`) and the export of semtile's models, whose test tensors and cover come from semtile's engines and
tiled path (:mod:`.export`). The package format itself (reading, preprocessing, the packaged network) is
:mod:`semtile.models.bioimageio`."""
