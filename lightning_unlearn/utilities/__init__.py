"""What every layer may use: outputs written whole or not at all, optional dependencies named by their extra, and old
spellings kept for one release with a warning. Imports nothing else of the package."""
