"""What the proxy tells its operators: metrics, the access log and logging, and the HTTP operations
endpoints.
"""
