"""Phoenix's version, in a module of its own: the package root imports the use cases (its API),
so a module of a lower layer that imported the version from the root would import them too."""

__version__ = "0.1.0"
