"""What the guest should do, as kernel command-line words, and the rest of that line."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from initkit.errors import InitkitError

KINDS = ("find", "shell", "exec", "run", "init")


@dataclass(frozen=True)
class Action:
    """One guest action: find | shell[=PROG] | exec PATH ARGS | run CMD | init PATH."""

    kind: str
    argv: tuple[str, ...] = ()  # exec: program and arguments; shell: optional program
    command: str = ""  # run: the shell command line; init: the program path

    def cmdline_word(self) -> str:
        """The kernel command-line word the guest init dispatches on."""
        if self.kind == "find":
            return "tvix.find"
        if self.kind == "shell":
            return "tvix.shell" + (f"={_value(self.argv[0], 'shell')}" if self.argv else "")
        if self.kind == "exec":
            for arg in self.argv:
                if not arg or any(c.isspace() for c in arg):
                    raise InitkitError(
                        f"--exec argument {arg!r} is empty or contains whitespace, which the "
                        "kernel command line cannot carry inside one argument; use --run "
                        "with shell quoting instead"
                    )
            return "tvix.exec=" + _value(" ".join(self.argv), "--exec")
        if self.kind == "run":
            return "tvix.run=" + _value(self.command, "--run")
        if self.kind == "init":
            return "init=" + _value(self.command, "--init")
        raise ValueError(f"unknown action {self.kind!r}")


def _value(text: str, flag: str) -> str:
    """Quote a value the way the kernel's parser reads it: double quotes, no escapes."""
    if '"' in text or "\n" in text or "\0" in text:
        raise InitkitError(
            f"{flag} value {text!r} contains a double quote, newline or NUL, which the kernel "
            "command line cannot carry; put the command in a script in the store and "
            "--exec it"
        )
    if not text:
        raise InitkitError(f"{flag} needs a non-empty value")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def new_nonce() -> str:
    """16 random hex characters for ``initkit.nonce=``."""
    return os.urandom(8).hex()  # not the secrets module: it costs 5 ms of imports


def kernel_cmdline(*, defaults: list[str], nonce: str, verbose: bool,
                   action: Action | None, extra: str = "", echo: bool = True) -> str:
    """The whole kernel command line: the VMM's needs, quiet unless verbose, the nonce,
    the user's extra words (see without_actions), then the action. ``echo=False``
    (input from a pipe, not a person) asks the guest console not to echo it back."""
    words = list(defaults)
    if not verbose:
        words.append("quiet")
    words.append("printk.time=1")  # the console filter tells kernel lines by their stamp
    words.append(f"initkit.nonce={nonce}")
    if not echo:
        words.append("initkit.noecho")
    if extra.strip():
        words.append(extra.strip())
    if action is not None:
        words.append(action.cmdline_word())
    return " ".join(words)


def split_cmdline(text: str) -> list[str]:
    """Split a kernel command line into words as the kernel does: on whitespace,
    except inside double quotes (which stay part of the word)."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char.isspace() and not quoted:
            if current:
                words.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        words.append("".join(current))
    return words


_ACTION_KEYS = ("tvix.find", "tvix.shell", "tvix.exec", "tvix.run", "init")


def action_words(text: str) -> list[str]:
    """The words of a command line that choose a guest action."""
    return [w for w in split_cmdline(text) if w.split("=", 1)[0] in _ACTION_KEYS]


def guest_action_key(text: str) -> str | None:
    """The action the guest will pick from a command line: the first of tvix.find,
    tvix.shell, tvix.exec, tvix.run, init that is present (the guest's order)."""
    keys = {w.split("=", 1)[0] for w in action_words(text)}
    return next((k for k in _ACTION_KEYS if k in keys), None)


def without_actions(text: str) -> str:
    """``text`` minus its action words: an action flag beats one in CH_CMDLINE."""
    return " ".join(w for w in split_cmdline(text) if w.split("=", 1)[0] not in _ACTION_KEYS)


def describe(action: Action | None) -> str:
    """The action as the user would type it, for messages."""
    if action is None:
        return "the initrd's default action"
    if action.kind in ("find", "shell"):
        return f"--{action.kind}"
    if action.kind == "exec":
        return "--exec " + shlex.join(action.argv)
    return f"--{action.kind} {shlex.quote(action.command)}"
