"""Reading configuration: `load` (the entry points), `yamlreader` (YAML with line numbers),
`document` and the section modules it calls (validation into `connectproxy.config`), `files`
(all that validation reads from disk), `summary` (what `check-config` prints) and `squid` (the
Squid reader and translator).
"""
