"""YAML with line numbers: the reader behind `parse_config`.

PyYAML's safe loader forgets where each value was written, but a config error must name the line.
So mappings and sequences are built as `LineMap` and `LineList` (yamllines), which also carry the
lines of their keys and items.

A text in the plain subset of YAML that `yamlsubset` reads gives the same result without PyYAML
at all, at a fraction of the cost; PyYAML reads only the rest, and is imported only then (its
import alone is a tenth of what `connectproxy explain` may take).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from connectproxy.configfile.errors import ConfigError
from connectproxy.configfile.yamllines import LineList, LineMap, line_list, line_map
from connectproxy.configfile.yamlsubset import read_subset

if TYPE_CHECKING:
    import yaml

__all__ = ["LineList", "LineMap", "read_yaml"]


def _line(node: yaml.Node) -> int:
    # int(): the image's build type-checks without PyYAML's stubs, where a mark is Any.
    return int(node.start_mark.line) + 1


_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"


@functools.cache
def _loader_class() -> type[yaml.SafeLoader]:
    """SafeLoader (no arbitrary objects) whose mappings and sequences carry 1-based lines, made
    on first use so a config in the subset never imports PyYAML."""
    import yaml

    # libyaml's parser when PyYAML was built with it: the pure-Python scanner took 7 of the 8
    # seconds `explain` spent on a config of 10,000 domain patterns and 2,000 identities, libyaml
    # a tenth of that. Both give the same nodes and marks; the constructors below are the same.
    base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class LineLoader(base):  # type: ignore[valid-type,misc,unused-ignore]
        pass

    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        """A node's value. A string is taken from the node directly, which is all SafeLoader's
        string constructor does: most of a large config is strings, and the general path's
        bookkeeping was a third of the time it took to read 10,000 domain patterns."""
        if node.tag == _STR_TAG and isinstance(node, yaml.ScalarNode):
            return node.value
        return loader.construct_object(node, deep=True)

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineMap:
        # `<<: *anchor` merges are allowed; a key written explicitly may override a merged one
        # (that is what merges are for), but two explicit spellings of one key are a duplicate.
        own_pairs = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
        loader.flatten_mapping(node)
        first_own = len(node.value) - own_pairs
        result = line_map(_line(node))
        own_keys: set[Any] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = construct(loader, key_node)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if index >= first_own:
                if key in own_keys:
                    result.duplicates.append((key, _line(key_node), result.key_lines[key]))
                own_keys.add(key)
            result[key] = construct(loader, value_node)
            result.key_lines[key] = _line(key_node)
        return result

    def construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LineList:
        result = line_list(_line(node))
        for item_node in node.value:
            result.append(construct(loader, item_node))
            result.item_lines.append(_line(item_node))
        return result

    LineLoader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    LineLoader.add_constructor("tag:yaml.org,2002:seq", construct_sequence)
    return LineLoader


def read_yaml(text: str, source: str) -> tuple[Any, int | None]:
    """The document's data (None when empty) and the line it starts on.

    Every failure of the YAML layer becomes a ConfigError naming `source` and, where the parser
    knows it, the line: a user's syntax slip must never surface as a PyYAML traceback.
    """
    subset = read_subset(text)
    if subset is not None:
        return subset
    return read_with_pyyaml(text, source)


def read_with_pyyaml(text: str, source: str) -> tuple[Any, int | None]:
    """`read_yaml` without the subset reader: what it falls back to, and what the tests hold the
    subset reader to."""
    import yaml

    loader = None
    try:
        loader = _loader_class()(text)  # already refuses unprintable characters
        node = loader.get_single_node()
        if node is None:
            return None, None
        return loader.construct_document(node), _line(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = ": ".join(part for part in (error.context, error.problem) if part)
        line = None if mark is None else mark.line + 1
        raise ConfigError(source, None, line, f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as error:
        # A NUL byte or another unprintable character: the error knows only its offset.
        line = text.count("\n", 0, error.position) + 1
        message = f"character U+{error.character:04X} is not allowed in YAML; remove it"
        raise ConfigError(source, None, line, message) from None
    except yaml.YAMLError as error:
        raise ConfigError(source, None, None, f"not valid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(source, None, None, "the YAML is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
