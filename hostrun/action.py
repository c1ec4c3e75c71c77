"""What the guest should do, as kernel command-line words, and the rest of that line.

The line is written by the guest's own rules: its keys and their order come from
guest/contract.py, and every word is checked by guest/cmdline.py's parser, the one the
init runs. What that parser would not read back exactly is refused here, before a VM
boots, instead of surprising the guest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from guest import contract
from guest.cmdline import Param, parse, words
from initkit.errors import InitkitError

_KEYS = {"find": contract.FIND_KEY, "shell": contract.SHELL_KEY, "exec": contract.EXEC_KEY,
         "run": contract.RUN_KEY, "init": contract.INIT_KEY}
# A bare word put after a candidate: a word that leaves a quote open would swallow it.
_PROBE = Param("initkit.probe", None)


@dataclass(frozen=True)
class Action:
    """One guest action: find | shell[=PROG] | exec PATH ARGS | run CMD | init PATH."""

    kind: str
    argv: tuple[str, ...] = ()  # exec: program and arguments; shell: optional program
    command: str = ""  # run: the shell command line; init: the program path

    def param(self) -> Param:
        """The command-line parameter the guest init dispatches on; InitkitError for a
        value the guest could not take back exactly."""
        key = _KEYS.get(self.kind)
        if key is None:
            raise ValueError(f"unknown action {self.kind!r}")
        if self.kind == "find":
            return Param(key, None)
        if self.kind == "shell":
            return Param(key, _argv_value(self.argv, "shell program") if self.argv else None)
        if self.kind == "exec":
            if not self.argv:
                raise InitkitError("--exec needs a program to run")
            return Param(key, _argv_value(self.argv, "--exec argument"))
        if not self.command.strip():
            raise InitkitError(f"--{self.kind} needs a non-empty value")
        return Param(key, self.command)

    def cmdline_word(self) -> str:
        """The kernel command-line word the guest init dispatches on."""
        param = self.param()
        return param_word(param.key, param.value, f"--{self.kind} value")


def chosen_actions(*, find: bool = False, shell: bool = False,
                   exec: Sequence[str] | None = None, run: str | None = None,
                   init: str | None = None) -> list[Action]:
    """The actions these choices name (the CLI's flags, the API's arguments), in the
    guest's order; what none or several mean is the caller's to say."""
    actions = []
    if find:
        actions.append(Action("find"))
    if shell:
        actions.append(Action("shell"))
    if exec is not None:
        actions.append(Action("exec", argv=tuple(exec)))
    if run is not None:
        actions.append(Action("run", command=run))
    if init is not None:
        actions.append(Action("init", command=init))
    return actions


def _argv_value(argv: tuple[str, ...], what: str) -> str:
    """argv as one value, which the guest splits back into words (contract.exec_argv)."""
    for arg in argv:
        if contract.exec_argv(arg) != (arg,):
            raise InitkitError(
                f"{what} {arg!r} is empty or contains whitespace, which the guest splits "
                "the program's arguments on; use --run with shell quoting instead"
            )
    return " ".join(argv)


def param_word(key: str, value: str | None, what: str) -> str:
    """The word that the guest's parser reads back as exactly ``key=value`` (``key`` for
    None), whatever words come after it: as it is, else in double quotes (the kernel's
    only quoting). InitkitError naming ``what`` when neither form does."""
    candidates = [key] if value is None else [f"{key}={value}", f'{key}="{value}"']
    for word in candidates:
        if _parses_as(f"{word} {_PROBE.key}", [Param(key, value), _PROBE]):
            return word
    if value is not None and "\0" in value:
        why = "a NUL ends the kernel command line"
    elif value is not None and '"' in value:
        why = ("the kernel's quoting has no escapes, so these double quotes would end it "
               "early or leave it open")
    else:
        why = "the kernel's parser would read it back differently"
    raise InitkitError(f"{what} {value!r} cannot be carried by the kernel command line: "
                       f"{why}; put the command in a script in the store and --exec it")


def _parses_as(line: str, expected: list[Param]) -> bool:
    try:
        parsed = parse(line)
    except UnicodeEncodeError:  # a lone surrogate no byte stands for
        return False
    return list(parsed.params) == expected and not parsed.init_params


def new_nonce() -> str:
    """16 random hex characters for ``initkit.nonce=``."""
    return os.urandom(8).hex()  # not the secrets module: it costs 5 ms of imports


def kernel_cmdline(*, defaults: list[str], nonce: str, verbose: bool,
                   action: Action | None, extra: str = "", echo: bool = True,
                   tag: str = contract.DEFAULT_TAG) -> str:
    """The whole kernel command line: the VMM's needs, quiet unless verbose, the nonce,
    the user's extra words (see without_actions), then the action. ``echo=False``
    (input from a pipe, not a person) asks the guest console not to echo it back;
    ``tag`` is the virtiofs tag the VMM attaches the store with. InitkitError when the
    guest would not read back the nonce, the tag and the action hostrun means."""
    line = [*defaults]
    if not verbose:
        line.append("quiet")
    line.append("printk.time=1")  # the console filter tells kernel lines by their stamp
    line.append(param_word(contract.NONCE_KEY, nonce, "the nonce"))
    if not echo:
        line.append(contract.NOECHO_KEY)
    if tag != contract.DEFAULT_TAG:
        line.append(param_word(contract.TAG_KEY, tag, "the virtiofs tag"))
    if "\0" in extra:
        raise InitkitError(f"the extra kernel command line {extra!r} contains a NUL, which "
                           "ends the kernel command line")
    line.extend(raw for raw, _ in words(extra))
    if action is not None:
        line.append(action.cmdline_word())
    text = " ".join(line)
    _check_line(text, nonce=nonce, tag=tag, action=action, extra=extra)
    return text


def _check_line(text: str, *, nonce: str, tag: str, action: Action | None,
                extra: str) -> None:
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > contract.CMDLINE_MAX_BYTES:
        raise InitkitError(
            f"the kernel command line would be {size} bytes, more than the "
            f"{contract.CMDLINE_MAX_BYTES} the kernel takes (it cuts the rest off); shorten "
            "the action or --cmdline, or put the command in a script in the store"
        )
    parsed = parse(text)
    blame = f"the extra kernel command line {extra!r}"
    if parsed.value(contract.NONCE_KEY) != nonce:
        raise InitkitError(f"{blame} sets {contract.NONCE_KEY}, which hostrun sets itself "
                           "for every run; drop it")
    if (parsed.value(contract.TAG_KEY) or contract.DEFAULT_TAG) != tag:
        raise InitkitError(f"{blame} sets {contract.TAG_KEY}, but hostrun attaches the store "
                           f"with tag {tag!r}; drop it")
    if action is not None:
        param = action.param()
        if (parsed.first_of(contract.ACTION_KEYS) != param.key
                or parsed.value(param.key) != param.value):
            raise InitkitError(f"{blame} keeps the guest from reading the action "
                               f"{param.word()!r} (an unclosed double quote, or an action "
                               "word of its own); fix or drop it")


def action_key(text: str) -> str | None:
    """The action key the guest will pick from a command line (contract.ACTION_KEYS)."""
    return parse(text).first_of(contract.ACTION_KEYS)


def without_actions(text: str) -> str:
    """``text`` minus its action words: an action flag beats one in CH_CMDLINE."""
    return " ".join(raw for raw, param in words(text) if param.key not in contract.ACTION_KEYS)
