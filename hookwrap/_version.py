"""hookwrap's version, in a leaf module so that every other module can read it."""

__version__ = "0.1.0"
