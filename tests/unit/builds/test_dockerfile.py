"""The Dockerfile parser and its substitution rules (pure: no engine)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.builds import dockerfile as df


def parse(text: str) -> list[df.Instruction]:
    return df.parse_dockerfile(text)


def test_basic_file_with_comments_directives_and_continuations() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "# a comment\n"
        "\n"
        "FROM berth/busybox AS base\n"
        "RUN echo one \\\n"
        "    # a comment inside a continuation is dropped\n"
        "    && echo two\n"
        'CMD ["sh", "-c", "echo hi"]\n'
    )
    instructions = parse(text)
    assert [i.keyword for i in instructions] == ["FROM", "RUN", "CMD"]
    assert [i.line for i in instructions] == [4, 5, 8]
    assert instructions[1].args == "echo one && echo two"
    assert instructions[1].exec_form is None
    assert instructions[2].exec_form == ("sh", "-c", "echo hi")
    assert instructions[1].text == "RUN echo one && echo two"


def test_keywords_are_case_insensitive() -> None:
    assert [i.keyword for i in parse("from berth/busybox\nrun true\n")] == ["FROM", "RUN"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("THIS IS NOT AN INSTRUCTION\n", "line 1: unknown instruction 'THIS'"),
        ("FROM berth/busybox\nFORM x\n", "line 2: unknown instruction 'FORM'"),
        ("FROM berth/busybox\nONBUILD RUN x\n", "line 2: ONBUILD is not supported"),
        ("RUN true\n", "must be FROM"),
        ("", "no instructions"),
        ("# only a comment\n", "no instructions"),
        ("FROM berth/busybox\nCOPY --frm=a b c\n", "does not take the option --frm"),
        ("FROM berth/busybox\nRUN --mount=type=cache true\n", "does not take the option --mount"),
        ("FROM berth/busybox\nCOPY --from= a b\n", "needs a value"),
        ("FROM berth/busybox\nENV\n", "ENV needs arguments"),
        ("FROM berth/busybox\x00\n", "NUL"),
    ],
)
def test_bad_dockerfiles_name_the_line(text: str, message: str) -> None:
    with pytest.raises(df.DockerfileError, match=message.replace("(", r"\(")):
        parse(text)


def test_size_and_instruction_limits() -> None:
    with pytest.raises(df.DockerfileError, match="larger than"):
        parse("FROM berth/busybox\n" + "#" * (df.MAX_DOCKERFILE_BYTES + 1))
    many = "FROM berth/busybox\n" + "ENV A=1\n" * df.MAX_INSTRUCTIONS
    with pytest.raises(df.DockerfileError, match=f"more than {df.MAX_INSTRUCTIONS}"):
        parse(many)
    assert len(parse("FROM berth/busybox\n" + "ENV A=1\n" * (df.MAX_INSTRUCTIONS - 1))) == 500


def test_arg_before_from() -> None:
    instructions = parse("ARG BASE=berth/busybox\nFROM $BASE\n")
    assert df.arg_declaration(instructions[0]) == ("BASE", "berth/busybox")
    assert df.from_parts(instructions[1], {"BASE": "berth/busybox"}) == ("berth/busybox", None)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("$A", {"A": "1"}, "1"),
        ("${A}", {"A": "1"}, "1"),
        ("x${A}y", {"A": "1"}, "x1y"),
        ("${A:-fallback}", {}, "fallback"),
        ("${A:-fallback}", {"A": "set"}, "set"),
        ("${A:-$B}", {"B": "b"}, "b"),
        ("${A:+alt}", {"A": "1"}, "alt"),
        ("${A:+alt}", {}, ""),
        ("$MISSING", {}, ""),
        ("\\$A", {"A": "1"}, "$A"),
        ("$", {}, "$"),
        ("$1", {}, "$1"),
        ("a b", {}, "a b"),
    ],
)
def test_substitution(text: str, env: dict[str, str], expected: str) -> None:
    assert df.substitute(text, env) == expected


@given(st.text(alphabet=st.characters(blacklist_characters="$\\"), max_size=50))
def test_text_without_dollars_is_unchanged(text: str) -> None:
    assert df.substitute(text, {"A": "x"}) == text


def test_env_forms() -> None:
    one, two, legacy = parse(
        "FROM berth/busybox\nENV A=1 B=\"two words\" C=${A}x\nENV D='$A'\nENV E some words here\n"
    )[1:]
    assert df.key_values(one, {"A": "1"}) == [("A", "1"), ("B", "two words"), ("C", "1x")]
    assert df.key_values(two, {"A": "1"}) == [("D", "$A")]  # single quotes: no substitution
    assert df.key_values(legacy, {}) == [("E", "some words here")]


def test_label_needs_key_value() -> None:
    instruction = parse("FROM berth/busybox\nLABEL justaword\n")[1]
    with pytest.raises(df.DockerfileError, match="key=value"):
        df.key_values(instruction, {})


def test_unterminated_quote_is_an_error() -> None:
    instruction = parse('FROM berth/busybox\nENV A="open\n')[1]
    with pytest.raises(df.DockerfileError, match="unterminated"):
        df.key_values(instruction, {})


def test_from_with_stage_name_and_platform_flag() -> None:
    instruction = parse("FROM --platform=linux/amd64 berth/python:3 AS Build\n")[0]
    assert instruction.flags == {"platform": "linux/amd64"}
    assert df.from_parts(instruction, {}) == ("berth/python:3", "build")
    bad = parse("FROM berth/python as\n")[0]
    with pytest.raises(df.DockerfileError):
        df.from_parts(bad, {})


def test_copy_forms_and_flags() -> None:
    plain, exec_form, flagged = parse(
        "FROM berth/busybox\n"
        "COPY a b /dest/\n"
        'COPY ["with space", "/d/"]\n'
        "COPY --from=build --chown=1000:1000 /app /app\n"
    )[1:]
    assert df.copy_parts(plain, {}) == (["a", "b"], "/dest/")
    assert df.copy_parts(exec_form, {}) == (["with space"], "/d/")
    assert flagged.flags == {"from": "build", "chown": "1000:1000"}
    assert df.chown_ids("1000:1000", 1) == (1000, 1000)
    assert df.chown_ids("7", 1) == (7, 7)
    with pytest.raises(df.DockerfileError, match="no user 'app'"):
        df.chown_ids("app:app", 1)


def test_chown_names_come_from_the_image() -> None:
    users = df.passwd_entries("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\nbad")
    groups = df.group_entries("root:x:0:\nstaff:x:50:\napp:x:1001:\n")
    assert df.chown_ids("app", 1, users, groups) == (1000, 1001)
    assert df.chown_ids("app:staff", 1, users, groups) == (1000, 50)
    assert df.chown_ids("app:7", 1, users, groups) == (1000, 7)
    with pytest.raises(df.DockerfileError, match="no group 'nogroup'"):
        df.chown_ids("app:nogroup", 1, users, groups)
    with pytest.raises(df.DockerfileError, match="no user"):
        df.chown_ids("../etc", 1, users, groups)


def test_add_from_a_url_is_refused() -> None:
    instruction = parse("FROM berth/busybox\nADD https://example.invalid/x.tar /x\n")[1]
    with pytest.raises(df.DockerfileError, match="URL is not supported"):
        df.copy_parts(instruction, {})


def test_run_cmd_entrypoint_commands() -> None:
    run, cmd, entry = parse(
        'FROM berth/busybox\nRUN echo $HOME\nCMD python3 app.py\nENTRYPOINT ["tini", "--"]\n'
    )[1:]
    assert df.command_of(run, df.DEFAULT_SHELL) == ["/bin/sh", "-c", "echo $HOME"]
    assert df.command_of(cmd, ("bash", "-lc")) == ["bash", "-lc", "python3 app.py"]
    assert df.command_of(entry, df.DEFAULT_SHELL) == ["tini", "--"]


def test_json_lookalike_runs_with_the_shell() -> None:
    run = parse("FROM berth/busybox\nRUN [not json\n")[1]
    assert run.exec_form is None
    assert df.command_of(run, df.DEFAULT_SHELL) == ["/bin/sh", "-c", "[not json"]


def test_expose_and_shell() -> None:
    expose, shell = parse('FROM berth/busybox\nEXPOSE 8080 53/udp $P\nSHELL ["/bin/ash", "-c"]\n')[
        1:
    ]
    assert df.exposed_ports(expose, {"P": "9000"}) == ["8080/tcp", "53/udp", "9000/tcp"]
    assert df.shell_of(shell) == ("/bin/ash", "-c")
    bad = parse("FROM berth/busybox\nEXPOSE http\n")[1]
    with pytest.raises(df.DockerfileError, match="not a port"):
        df.exposed_ports(bad, {})
    with pytest.raises(df.DockerfileError, match="JSON form"):
        df.shell_of(parse("FROM berth/busybox\nSHELL /bin/sh -c\n")[1])


def test_arg_declarations() -> None:
    plain, default, quoted = parse('FROM berth/busybox\nARG A\nARG B=2\nARG C="x y"\n')[1:]
    assert df.arg_declaration(plain) == ("A", None)
    assert df.arg_declaration(default) == ("B", "2")
    assert df.arg_declaration(quoted) == ("C", "x y")
    with pytest.raises(df.DockerfileError, match="not a valid variable name"):
        df.arg_declaration(parse("FROM berth/busybox\nARG 1BAD=x\n")[1])


@given(st.text(max_size=300))
def test_parser_never_crashes(text: str) -> None:
    try:
        instructions = parse(text)
    except df.DockerfileError as exc:
        assert "Dockerfile" in str(exc) or str(exc)
    else:
        assert instructions[0].keyword in ("FROM", "ARG")
