"""Reading configuration: the YAML reader with line numbers, validation into `connectproxy.config`,
the summary `check-config` prints, and the Squid reader and translator.
"""
