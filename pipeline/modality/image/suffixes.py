"""The file suffixes of images (what a folder source and ``predict`` take for images):
apart from decoding, so that telling a project's modality from its files (prepare)
does not rerun when decoding changes."""

IMAGE_SUFFIXES = (".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif",
                  ".tiff", ".webp", ".avif")
