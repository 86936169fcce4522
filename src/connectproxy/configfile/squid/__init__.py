"""squid.conf: the directive reader and the translation into connectproxy's model."""
