"""Server interceptors, one concern per module, composed in server/app.py.

Each subclasses interceptors.base.ServerInterceptor and implements one
`intercept` hook; none holds service logic.
"""
