"""mailgate: the e-mail gateway of a service desk."""

__version__ = "0.1.0"
