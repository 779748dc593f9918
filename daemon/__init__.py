"""intentd: the streaming speech-intent daemon. Submodules import heavy libraries only where they need them."""
