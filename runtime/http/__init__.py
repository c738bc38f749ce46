"""The HTTP wing: the Starlette app, Gunicorn, middleware, and the routes of both protocols.

Route modules only decode, call and encode; the work happens in the core and in the backends.
"""
