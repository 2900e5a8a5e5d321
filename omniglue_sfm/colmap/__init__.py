"""The COLMAP side shared by both SfM pipelines: mapping through pycolmap, model outputs, the summary."""
