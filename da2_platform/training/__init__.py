"""The one training recipe: every search method's children and production training call it."""
