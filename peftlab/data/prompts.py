"""Prompt templates: how a code→doc example becomes the model's input text.

A template is a ``str.format`` string over the example's fields. Unknown fields are rejected up
front, with the allowed ones listed, rather than surfacing as a KeyError mid-run.
"""

from __future__ import annotations

import string

from peftlab.errors import ConfigError

# The seed task's prompt, verbatim: the function name, the cleaned code, then the instruction.
SEED000_TEMPLATE = (
    "This is the function name:\n{func_name}\nCode:\n{code}\nProvide the documentation for the following code:\n"
)

PROMPT_FIELDS = ("func_name", "code", "path")


def template_fields(template: str) -> list[str]:
    """The ``{field}`` names a template uses; raises ConfigError for any not in PROMPT_FIELDS."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # e.g. a lone '{' or '}'
        raise ConfigError(f"prompt template is malformed ({e}); write literal braces as '{{{{' and '}}}}'") from None
    for name in names:
        if name not in PROMPT_FIELDS:
            raise ConfigError(
                f"prompt template uses unknown field {{{name}}}; allowed fields: {', '.join(PROMPT_FIELDS)}"
            )
    return names


def render_prompt(template: str, example) -> str:
    """``template`` filled from ``example`` (a Code2DocExample, or a mapping with the same keys)."""
    template_fields(template)
    get = example.get if isinstance(example, dict) else lambda name, default: getattr(example, name, default)
    return template.format(**{name: get(name, "") for name in PROMPT_FIELDS})
