"""mailgate: the e-mail gateway of a service desk."""

__version__ = "0.1.0"
LANGUAGES = ("en", "de")  # what mailgate speaks: the contacts' languages, the templates' folders
DEFAULT_LANGUAGE = "en"  # the default desk's ([tickets] has no language of its own)
