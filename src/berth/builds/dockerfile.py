"""Dockerfiles, parsed without Docker: text in, a list of instructions out (pure, no I/O).

What is understood, and how it differs from Docker's own builder:

- Line continuations (a trailing ``\\``), comments and empty lines; parser directives
  (``# syntax=``, ``# escape=``) are read as comments (the escape character is always ``\\``).
- ``FROM [--platform=...] IMAGE [AS name]`` (``--platform`` is ignored: one platform here),
  ``RUN``, ``COPY``/``ADD`` ``[--from=X] [--chown=u:g] src... dest``, ``ENV`` (``k=v`` pairs and
  the legacy ``ENV k v``), ``ARG name[=default]``, ``WORKDIR``, ``USER``, ``EXPOSE``, ``CMD``,
  ``ENTRYPOINT``, ``LABEL``, ``STOPSIGNAL``, ``SHELL``, in exec (JSON) and shell forms.
- ``ADD`` copies local files like ``COPY``: a URL is refused and a tar archive is copied as it
  is, not unpacked.
- ``HEALTHCHECK`` and ``VOLUME`` are ignored with a log line (Berth checks health itself, and an
  app has no volumes); ``MAINTAINER`` becomes a label; ``ONBUILD`` (which changes later builds
  behind their author's back) and flags such as ``RUN --mount`` are refused.
- Build args (``ARG``) reach a shell-form ``RUN`` (exported by the shell, so they stay out of
  the image); an exec-form ``RUN`` does not see them. There are no ``--build-arg`` values.
- ``$VAR``, ``${VAR}``, ``${VAR:-default}`` and ``${VAR:+alt}`` are substituted where Docker
  substitutes them (not in ``RUN``/``CMD``/``ENTRYPOINT``, where the shell does it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

DOCKERFILE_NAME = "Dockerfile"
MAX_DOCKERFILE_BYTES = 1024 * 1024
MAX_INSTRUCTIONS = 500

KNOWN = frozenset(
    {
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "WORKDIR",
        "USER",
        "EXPOSE",
        "CMD",
        "ENTRYPOINT",
        "LABEL",
        "STOPSIGNAL",
        "SHELL",
        "HEALTHCHECK",
        "VOLUME",
        "MAINTAINER",
    }
)
REFUSED = {
    "ONBUILD": "ONBUILD is not supported: it changes later builds behind their author's back",
}
# Flags each instruction accepts (all others are refused, so a typo is not silently ignored).
FLAGS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "COPY": frozenset({"from", "chown", "chmod"}),
    "ADD": frozenset({"chown", "chmod"}),
    "RUN": frozenset(),
}
_FLAG = re.compile(r"^--([a-z][a-z-]*)(?:=(.*))?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9._-]{0,62}$")
_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
DEFAULT_SHELL: tuple[str, ...] = ("/bin/sh", "-c")


class DockerfileError(ValueError):
    """The Dockerfile cannot be built; ``str()`` names the line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"Dockerfile line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True)
class Instruction:
    """One instruction: keyword, flags, and its argument text (continuations joined)."""

    line: int
    keyword: str
    args: str
    flags: Mapping[str, str] = field(default_factory=dict)
    # The JSON array of the exec form, when the arguments are one.
    exec_form: tuple[str, ...] | None = None

    @property
    def text(self) -> str:
        """The instruction as a log line shows it (``Step 2/5 : RUN make``)."""
        flags = "".join(f"--{k}={v} " for k, v in self.flags.items())
        return f"{self.keyword} {flags}{self.args}".rstrip()


# --- lines -----------------------------------------------------------------------------------


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, joined text) of each instruction; comments and blanks dropped."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped, as Docker does
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending.append(raw.rstrip()[:-1])
            continue
        pending.append(raw)
        result.append((start, " ".join(part.strip() for part in pending).strip()))
        pending = []
    if pending:
        joined = " ".join(part.strip() for part in pending).strip()
        if joined:
            result.append((start, joined))
    return result


def _split_flags(keyword: str, rest: str, line: int) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    allowed = FLAGS.get(keyword, frozenset())
    while rest.startswith("--"):
        word, _, remainder = rest.partition(" ")
        match = _FLAG.match(word)
        if match is None or match.group(1) not in allowed:
            raise DockerfileError(line, f"{keyword} does not take the option {word.split('=')[0]}")
        if match.group(2) is None or match.group(2) == "":
            raise DockerfileError(line, f"{keyword} option --{match.group(1)} needs a value")
        flags[match.group(1)] = match.group(2)
        rest = remainder.lstrip()
    return flags, rest


def _exec_form(args: str) -> tuple[str, ...] | None:
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except ValueError:
        return None  # Docker runs a line that only looks like JSON with the shell
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, or DockerfileError naming the first bad line."""
    if len(text.encode("utf-8", "surrogateescape")) > MAX_DOCKERFILE_BYTES:
        raise DockerfileError(0, f"the Dockerfile is larger than {MAX_DOCKERFILE_BYTES} bytes")
    if "\x00" in text:
        raise DockerfileError(0, "the Dockerfile contains a NUL byte")
    instructions: list[Instruction] = []
    for line, logical in _logical_lines(text):
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        if keyword in REFUSED:
            raise DockerfileError(line, REFUSED[keyword])
        if keyword not in KNOWN:
            raise DockerfileError(line, f"unknown instruction {keyword[:40]!r}")
        flags, rest = _split_flags(keyword, rest.strip(), line)
        instructions.append(Instruction(line, keyword, rest, flags, _exec_form(rest)))
        if len(instructions) > MAX_INSTRUCTIONS:
            raise DockerfileError(line, f"more than {MAX_INSTRUCTIONS} instructions")
    _check_structure(instructions)
    return instructions


def _check_structure(instructions: list[Instruction]) -> None:
    if not instructions:
        raise DockerfileError(0, "the Dockerfile has no instructions")
    first = next((i for i in instructions if i.keyword != "ARG"), None)
    if first is None or first.keyword != "FROM":
        line = first.line if first else instructions[0].line
        raise DockerfileError(line, "the first instruction (after ARGs) must be FROM")
    for instruction in instructions:
        needs_args = instruction.keyword not in ("CMD", "ENTRYPOINT")
        if needs_args and not instruction.args:
            raise DockerfileError(instruction.line, f"{instruction.keyword} needs arguments")


# --- words and substitution ------------------------------------------------------------------


def substitute(text: str, env: Mapping[str, str]) -> str:
    """``text`` with ``$VAR``, ``${VAR}``, ``${VAR:-word}``, ``${VAR:+word}`` replaced.

    Unknown variables become "" (as in Docker); ``\\$`` keeps a literal dollar sign.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if ch == "$":
            match = _VAR.match(text, i)
            if match is not None:
                out.append(_expand(match, env))
                i = match.end()
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _expand(match: re.Match[str], env: Mapping[str, str]) -> str:
    name = match.group("braced") or match.group("plain")
    value = env.get(name, "")
    op = match.group("op")
    if op == "-":
        return value if value else substitute(match.group("word") or "", env)
    if op == "+":
        return substitute(match.group("word") or "", env) if value else ""
    return value


def split_words(text: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Shell-like words: quotes group, ``\\`` escapes; substitution outside single quotes."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
            i += 1
            continue
        in_word = True
        if ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("unterminated single quote")
            current.append(text[i + 1 : end])
            i = end + 1
        elif ch == '"':
            i = _double_quoted(text, i + 1, current, env)
        elif ch == "\\" and i + 1 < len(text):
            current.append(text[i + 1])
            i += 2
        elif ch == "$" and env is not None:
            match = _VAR.match(text, i)
            if match is None:
                current.append(ch)
                i += 1
            else:
                current.append(_expand(match, env))
                i = match.end()
        else:
            current.append(ch)
            i += 1
    if in_word:
        words.append("".join(current))
    return words


def _double_quoted(text: str, i: int, current: list[str], env: Mapping[str, str] | None) -> int:
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return i + 1
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in '"\\$':
            current.append(text[i + 1])
            i += 2
        elif ch == "$" and env is not None and (match := _VAR.match(text, i)) is not None:
            current.append(_expand(match, env))
            i = match.end()
        else:
            current.append(ch)
            i += 1
    raise ValueError("unterminated double quote")


def key_values(instruction: Instruction, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """The pairs of ``ENV``/``LABEL``: ``k=v`` words, or the legacy ``ENV k v w`` form."""
    first = instruction.args.split(None, 1)
    try:
        if instruction.keyword == "ENV" and first and "=" not in first[0]:
            name = first[0]
            rest = first[1] if len(first) > 1 else ""
            if not rest:
                raise DockerfileError(instruction.line, f"ENV {name} needs a value")
            return [(name, " ".join(split_words(rest, env)))]
        words = split_words(instruction.args, env)
    except ValueError as exc:
        raise DockerfileError(instruction.line, str(exc)) from exc
    pairs: list[tuple[str, str]] = []
    for word in words:
        name, eq, value = word.partition("=")
        if not eq or not name:
            raise DockerfileError(
                instruction.line, f"{instruction.keyword} expects key=value, not {word[:60]!r}"
            )
        pairs.append((name, value))
    if not pairs:
        raise DockerfileError(instruction.line, f"{instruction.keyword} needs key=value")
    return pairs


def check_env_name(name: str, line: int) -> str:
    if not _NAME.match(name):
        raise DockerfileError(line, f"{name[:60]!r} is not a valid variable name")
    return name


def arg_declaration(instruction: Instruction) -> tuple[str, str | None]:
    """``ARG name`` or ``ARG name=default``: (name, default or None)."""
    try:
        words = split_words(instruction.args)
    except ValueError as exc:
        raise DockerfileError(instruction.line, str(exc)) from exc
    if len(words) != 1:
        raise DockerfileError(instruction.line, "ARG takes one name[=default]")
    name, eq, default = words[0].partition("=")
    check_env_name(name, instruction.line)
    return name, default if eq else None


def from_parts(instruction: Instruction, env: Mapping[str, str]) -> tuple[str, str | None]:
    """``FROM image [AS name]``: the substituted image reference and the stage name."""
    words = substitute(instruction.args, env).split()
    if len(words) == 1:
        return words[0], None
    if len(words) == 3 and words[1].upper() == "AS":
        name = words[2].lower()
        if not _STAGE_NAME.match(name):
            raise DockerfileError(instruction.line, f"{words[2][:60]!r} is not a valid stage name")
        return words[0], name
    raise DockerfileError(instruction.line, "FROM takes an image and an optional AS name")


def command_of(instruction: Instruction, shell: tuple[str, ...]) -> list[str]:
    """The argv of ``RUN``/``CMD``/``ENTRYPOINT``: the exec form, or the shell plus the text."""
    if instruction.exec_form is not None:
        return list(instruction.exec_form)
    return [*shell, instruction.args] if instruction.args else []


def copy_parts(instruction: Instruction, env: Mapping[str, str]) -> tuple[list[str], str]:
    """The sources and the destination of ``COPY``/``ADD`` (JSON or plain words)."""
    if instruction.exec_form is not None:
        words = [substitute(word, env) for word in instruction.exec_form]
    else:
        try:
            words = split_words(instruction.args, env)
        except ValueError as exc:
            raise DockerfileError(instruction.line, str(exc)) from exc
    if len(words) < 2:
        raise DockerfileError(instruction.line, f"{instruction.keyword} needs a source and a dest")
    sources, dest = words[:-1], words[-1]
    if instruction.keyword == "ADD":
        for source in sources:
            if _URL.match(source):
                raise DockerfileError(
                    instruction.line,
                    "ADD from a URL is not supported: Berth builds never download; "
                    "put the file in the build context",
                )
    return sources, dest


_ACCOUNT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")


def chown_ids(
    value: str,
    line: int,
    users: Mapping[str, tuple[int, int]] | None = None,
    groups: Mapping[str, int] | None = None,
) -> tuple[int, int]:
    """``--chown=user[:group]`` as numbers; names are looked up in the image's ``users``
    (name: (uid, primary gid), from /etc/passwd) and ``groups`` (from /etc/group)."""
    user, colon, group = value.partition(":")
    if user.isdigit():
        uid, default_gid = int(user), int(user)
    elif _ACCOUNT.match(user) and users is not None and user in users:
        uid, default_gid = users[user]
    else:
        raise DockerfileError(line, f"--chown: no user {user[:40]!r} in the image")
    if not colon:
        gid = default_gid
    elif group.isdigit():
        gid = int(group)
    elif _ACCOUNT.match(group) and groups is not None and group in groups:
        gid = groups[group]
    else:
        raise DockerfileError(line, f"--chown: no group {group[:40]!r} in the image")
    if uid > 2**31 or gid > 2**31:
        raise DockerfileError(line, f"--chown={value[:40]}: id out of range")
    return uid, gid


def passwd_entries(text: str) -> dict[str, tuple[int, int]]:
    """name: (uid, gid) from /etc/passwd text (malformed lines skipped)."""
    entries: dict[str, tuple[int, int]] = {}
    for raw in text.splitlines():
        fields = raw.split(":")
        if len(fields) >= 4 and fields[2].isdigit() and fields[3].isdigit():
            entries.setdefault(fields[0], (int(fields[2]), int(fields[3])))
    return entries


def group_entries(text: str) -> dict[str, int]:
    """name: gid from /etc/group text (malformed lines skipped)."""
    entries: dict[str, int] = {}
    for raw in text.splitlines():
        fields = raw.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            entries.setdefault(fields[0], int(fields[2]))
    return entries


def chmod_mode(value: str, line: int) -> int:
    if not re.fullmatch(r"[0-7]{3,4}", value):
        raise DockerfileError(line, f"--chmod={value[:40]} must be an octal mode like 755")
    return int(value, 8)


def exposed_ports(instruction: Instruction, env: Mapping[str, str]) -> list[str]:
    """``EXPOSE 8080 53/udp`` as Docker's port keys (``8080/tcp``, ``53/udp``)."""
    ports: list[str] = []
    for word in substitute(instruction.args, env).split():
        number, _, proto = word.partition("/")
        proto = (proto or "tcp").lower()
        if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("tcp", "udp"):
            raise DockerfileError(instruction.line, f"{word[:40]!r} is not a port")
        ports.append(f"{int(number)}/{proto}")
    return ports


def shell_of(instruction: Instruction) -> tuple[str, ...]:
    if instruction.exec_form is None or not instruction.exec_form:
        raise DockerfileError(
            instruction.line, 'SHELL needs the JSON form: SHELL ["/bin/sh", "-c"]'
        )
    return instruction.exec_form


def single_word(instruction: Instruction, env: Mapping[str, str]) -> str:
    """The argument of ``WORKDIR``/``USER``/``STOPSIGNAL`` after substitution."""
    value = substitute(instruction.args, env).strip()
    if not value or any(ch in value for ch in "\n\r\x00"):
        raise DockerfileError(instruction.line, f"{instruction.keyword} needs one value")
    return value
