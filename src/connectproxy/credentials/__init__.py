"""Who a client is: password hashes, htpasswd files, and the authenticator that checks Basic
credentials off the event loop.
"""
