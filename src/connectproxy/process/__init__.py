"""The process: the command line, start-up and reload, workers, systemd notification, doctor."""
