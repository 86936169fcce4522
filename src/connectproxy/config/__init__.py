"""The validated, immutable configuration model. Everything that decides or serves reads it; only
`connectproxy.configfile` builds it.
"""
