"""The network side: socket I/O on the event loop, deadlines, resolving and connecting directly or
through an upstream proxy, behind one Connector.
"""
