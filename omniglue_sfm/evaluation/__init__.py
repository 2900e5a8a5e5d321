"""Measurements against ground truth: a model's poses, two-view matches, localization recall
(docs/design.md, section 5)."""
