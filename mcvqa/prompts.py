"""The conversation each row becomes: one default instruction, optional per-question-type templates."""

from mcvqa import LETTERS
from mcvqa.errors import UserError

DEFAULT_INSTRUCTION = "Answer with the letter of the correct option (a, b, c or d) only."


def user_text(question, options, template=None):
    """The user turn's text: question, one `a. ...` line per option, instruction.

    `template` is a format string with `{question}`, `{options}` and `{instruction}`; `None` uses the default layout.
    """
    lines = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))
    if template:
        return template.format(question=question, options=lines, instruction=DEFAULT_INSTRUCTION)
    return f"{question}\n{lines}\n{DEFAULT_INSTRUCTION}"


def conversation(question, options, answer=None, template=None):
    """Chat messages for the processor's chat template; the assistant turn only when the answer is known."""
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": user_text(question, options, template)}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def template_problem(template, flag="--prompt_template"):
    """Why a user-turn template cannot be filled (unknown placeholder, stray brace), or None."""
    import string

    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        return f"{flag} {template!r}: {err} (write a literal brace as {{{{ or }}}})"
    unknown = sorted(fields - {"question", "options", "instruction"})
    if unknown:
        return (f"{flag} {template!r}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)} "
                "(allowed: {question}, {options}, {instruction})")
    if "options" not in fields:
        return f"{flag} {template!r}: has no {{options}}: the model would never see the options"
    return None


def parse_templates(text):
    """`--templates_by_type` (JSON or YAML text) -> {question_type: template}, or None when not given."""
    if not text:
        return None
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise UserError("--templates_by_type must be a mapping such as '{\"colour\": \"{question} ...\"}'")
    problems = [template_problem(str(t), f"--templates_by_type {k!r}:") for k, t in value.items()]
    if any(problems):
        raise UserError("; ".join(p for p in problems if p))
    return value
