"""The chat features: what a member can do with the bot beyond being remembered and answered —
commands, settings, billing, their own API keys, files and drawings, the owners' /admin, capacity
notices and plugins. They sit above the actor runtime (``actors``) and see a chat only through an
``actors.handlers.ChatContext``; ``features.registry.HANDLERS`` is the table the runtime is opened
with, and ``features.app.open_runtime`` opens it so. (This package imports nothing on its own: a
command that needs one feature does not load them all.)
"""
