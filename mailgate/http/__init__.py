"""The daemon's HTTP side: health, metrics, notification links, the agents' API."""

from aiohttp import web

APP = web.AppKey("mailgate", object)  # the running mailgate.app.App
