"""The wire formats, sans-IO: bytes in, a parsed object or a typed error out (request head,
responses, PROXY protocol, host names). Nothing here touches a socket or the config.
"""
