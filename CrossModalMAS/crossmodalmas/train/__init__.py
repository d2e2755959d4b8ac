"""Training of the package's networks on synthetic (or the user's own) labelled pairs."""
