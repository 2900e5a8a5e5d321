"""Configuration as data: named presets (``presets.toml``), the plugin registry they are validated
against, and the option dataclasses that say how a run executes (docs/design.md, section 2)."""
