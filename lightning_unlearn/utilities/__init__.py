"""What every layer may use: outputs written whole or not at all, optional dependencies named by their extra, the one
exception type for what a user can fix, and old spellings kept for one release with a warning. Imports nothing else of
the package."""
