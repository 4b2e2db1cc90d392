#!/usr/bin/env python3
"""Reference renders for moe's chat templates (src/io/chat_template.h), made by transformers itself.

Every real template in tests/data/chat_templates/*.jinja is rendered over a set of conversations
(system message or not, one or several turns, assistant last or not, add_generation_prompt on and
off, tools and tool calls, reasoning / enable_thinking, non-ASCII text and text that looks like
Jinja) with transformers' render_jinja_template, the function apply_chat_template calls; then a set
of small templates exercising the Jinja language is rendered with transformers' compiled
environment (_compile_jinja_template: jinja2's ImmutableSandboxedEnvironment with trim_blocks,
lstrip_blocks, loopcontrols, raise_exception, strftime_now, its tojson, dict and namespace). Each
case records the exact output, or the exception's type and message (raise_exception's text,
jinja2's UndefinedError, ...). strftime_now sees a fixed clock, 2024-07-26 10:30:00.

The C++ test (tests/test_chat_template.cc) reads the committed expected.json; the default test
suite needs no Python. Regenerate it with the pinned oracles (jinja2 3.1.6, transformers 5.23.0):

    $(scripts/oracle_venv.sh --torch) scripts/gen_chat_template_refs.py

Options: --check compares against the committed file instead of writing it.
"""
import argparse
import datetime
import json
import os
import sys

import jinja2
import transformers
import transformers.utils.chat_template_utils as ctu
from transformers.utils.chat_template_utils import _compile_jinja_template, render_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data", "chat_templates")
OUT = os.path.join(DATA, "expected.json")


class FixedClock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime(2024, 7, 26, 10, 30, 0)


# strftime_now() reads datetime.now() from transformers' module: a fixed date makes renders
# reproducible (the C++ test sets the same clock).
ctu.datetime = FixedClock

# ---------------------------------------------------------------------------------------------
# Conversations

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "description": "Forecast days"},
                "precision": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "verbose": {"type": "boolean", "nullable": True},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}

SYS = {"role": "system", "content": "You are a helpful assistant."}


def conv(*msgs):
    return list(msgs)


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


CONVERSATIONS = {
    "user": conv(u("Hello")),
    "system_user": conv(SYS, u("Hello")),
    "multi_turn": conv(u("Hello"), a("Hi there! How can I help?"), u("What is 2+2?")),
    "assistant_last": conv(SYS, u("Hello"), a("Hi there!")),
    "long": conv(SYS, u("One"), a("First answer."), u("Two"), a("Second answer."), u("Three")),
    "unicode_jinja_text": conv(
        u("Grüße 😀 {{ not_a_var }} {% if x %} {# c #} \\n <s>[INST]"),
        a("日本語のテキスト\n  indented line\ttab"),
        u("   padded   \n\n"),
    ),
    "roles_not_alternating": conv(u("One"), u("Two")),
    "system_only": conv(SYS),
    "empty": conv(),
    "tool_calls": conv(
        SYS,
        u("What's the weather in Zürich?"),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call12345",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": '{"temperature": 21.5, "sky": "clear"}'},
        a("It is 21.5 °C and clear in Zürich."),
        u("Thanks!"),
    ),
    "tool_calls_string_args": conv(
        u("Search for jinja"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call00001", "type": "function", "function": {"name": "search", "arguments": '{"query": "jinja"}'}},
                {"id": "call00002", "type": "function", "function": {"name": "search", "arguments": '{"query": "jinja2"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call00001", "content": "result one"},
        {"role": "tool", "tool_call_id": "call00002", "content": "result two"},
    ),
    "reasoning": conv(
        u("Is 17 prime?"),
        {"role": "assistant", "content": "Yes, 17 is prime.", "reasoning_content": "Check divisors 2, 3, 4: none divide 17."},
        u("And 21?"),
    ),
    "think_in_content": conv(
        u("Is 9 prime?"),
        a("<think>\n3 divides 9.\n</think>\n\nNo, 9 = 3 x 3."),
        u("And 11?"),
        a("<think>nothing divides 11</think>Yes."),
    ),
    "content_parts": conv(
        {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "text", "text": "this."}]},
    ),
}

TOOLS = [WEATHER_TOOL, SEARCH_TOOL]

BASIC = ["user", "system_user", "multi_turn", "assistant_last", "long", "unicode_jinja_text",
         "roles_not_alternating", "system_only", "empty"]

# name -> (file, bos, eos, conversations, extra context variants)
TEMPLATES = {
    "mixtral-8x7b-instruct-v0.1": ("<s>", "</s>", BASIC + ["tool_calls"], [{}]),
    "mistral-7b-instruct-v0.3": ("<s>", "</s>", BASIC + ["tool_calls", "tool_calls_string_args"], [{}, {"tools": TOOLS}]),
    "mistral-nemo-instruct-2407": ("<s>", "</s>", BASIC + ["tool_calls"], [{}, {"tools": TOOLS}]),
    "llama-2-chat": ("<s>", "</s>", BASIC, [{}]),
    "llama-3-instruct": ("<|begin_of_text|>", "<|eot_id|>", BASIC, [{}]),
    "llama-3.1-instruct": ("<|begin_of_text|>", "<|eot_id|>", BASIC + ["tool_calls"],
                           [{}, {"tools": TOOLS}, {"tools": [WEATHER_TOOL], "tools_in_user_message": False, "date_string": "01 Jan 2025"},
                            {"builtin_tools": ["brave_search", "wolfram_alpha"]}]),
    "llama-3.2-instruct": ("<|begin_of_text|>", "<|eot_id|>", BASIC + ["tool_calls"], [{}, {"tools": [WEATHER_TOOL]}]),
    "qwen2-instruct": ("", "<|im_end|>", BASIC, [{}]),
    "qwen2.5-instruct": ("", "<|im_end|>", BASIC + ["tool_calls", "tool_calls_string_args"], [{}, {"tools": TOOLS}]),
    "qwen3": ("", "<|im_end|>", BASIC + ["tool_calls", "tool_calls_string_args", "reasoning", "think_in_content"],
              [{}, {"enable_thinking": False}, {"enable_thinking": True, "tools": TOOLS}]),
    "olmoe-instruct": ("<|endoftext|>", "<|endoftext|>", BASIC, [{}]),
    "gemma-2-it": ("<bos>", "<eos>", BASIC, [{}]),
    "deepseek-v2.5": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", BASIC + ["tool_calls_string_args"], [{}]),
    "deepseek-v3.1": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", BASIC + ["tool_calls_string_args", "think_in_content"],
                      [{}, {"thinking": True}]),
    "deepseek-r1-distill-qwen": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                                 BASIC + ["tool_calls_string_args", "think_in_content"], [{}]),
    "kimi-k2": ("[BOS]", "[EOS]", BASIC + ["tool_calls", "content_parts"], [{}, {"tools": TOOLS}]),
    "gpt-oss": ("<|startoftext|>", "<|return|>", BASIC + ["tool_calls", "reasoning"],
                [{}, {"tools": TOOLS, "reasoning_effort": "high"}, {"builtin_tools": ["browser", "python"], "model_identity": "You are moe."}]),
}


def outcome(fn):
    try:
        return {"output": fn()}
    except Exception as e:  # the exception is the expected result
        return {"error": str(e), "error_type": type(e).__name__}


def template_cases():
    cases = []
    for name, (bos, eos, convs, extras) in TEMPLATES.items():
        with open(os.path.join(DATA, name + ".jinja"), encoding="utf-8") as f:
            source = f.read()
        for ci, cname in enumerate(convs):
            for ei, extra in enumerate(extras):
                # every conversation with the plain context, the extra contexts on a few of them
                if ei > 0 and cname not in ("system_user", "multi_turn", "tool_calls", "tool_calls_string_args",
                                            "reasoning", "think_in_content", "assistant_last"):
                    continue
                for agp in (False, True):
                    if agp and cname in ("roles_not_alternating", "system_only", "empty", "long"):
                        continue
                    messages = CONVERSATIONS[cname]
                    kwargs = {k: v for k, v in extra.items() if k not in ("tools", "documents")}

                    def render(messages=messages, extra=extra, kwargs=kwargs, agp=agp):
                        out, _ = render_jinja_template(
                            conversations=[json.loads(json.dumps(messages))],
                            tools=extra.get("tools"),
                            documents=extra.get("documents"),
                            chat_template=source,
                            add_generation_prompt=agp,
                            bos_token=bos,
                            eos_token=eos,
                            **kwargs,
                        )
                        return out[0]

                    case = {
                        "name": f"{name}/{cname}/extra{ei}/{'gen' if agp else 'nogen'}",
                        "template": name + ".jinja",
                        "messages": messages,
                        "add_generation_prompt": agp,
                        "bos_token": bos,
                        "eos_token": eos,
                        "extra": extra,
                    }
                    case.update(outcome(render))
                    cases.append(case)
    return cases


def snippet_cases():
    from chat_template_snippets import SNIPPETS  # scripts/chat_template_snippets.py

    cases = []
    for i, (source, context) in enumerate(SNIPPETS):
        case = {"name": f"snippet/{i}", "source": source, "context": context}
        case.update(outcome(lambda: _compile_jinja_template(source).render(**context)))
        cases.append(case)
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed expected.json")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    doc = {
        "generator": "scripts/gen_chat_template_refs.py",
        "jinja2": jinja2.__version__,
        "transformers": transformers.__version__,
        "clock": "2024-07-26T10:30:00",
        "templates": template_cases(),
        "snippets": snippet_cases(),
    }
    text = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    if args.check:
        with open(OUT, encoding="utf-8") as f:
            same = f.read() == text
        print("expected.json is up to date" if same else "expected.json differs from a fresh render")
        return 0 if same else 1
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    n_t, n_s = len(doc["templates"]), len(doc["snippets"])
    n_err = sum("error" in c for c in doc["templates"] + doc["snippets"])
    print(f"wrote {OUT}: {n_t} template cases, {n_s} snippets ({n_err} expected errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
