"""Write Java stubs of ExecuTorch's Android LLM API from its Kotlin sources, so the demo app's Java is
compiled against the signatures Java really sees (`.ci/run`), without the Android SDK or the AAR.

    python android_demo/stubs/generate.py EXECUTORCH_CHECKOUT REF

reads extension/android/executorch_android/src/main/java/org/pytorch/executorch/{...}.kt at REF (a tag or
commit of pytorch/executorch) with `git show` and writes android_demo/stubs/java/. Each stub keeps every
public declaration as Java sees a Kotlin one — secondary constructors, methods, `const val` and
`@JvmStatic` members of the companion object, primary-constructor `val`s as getters (`@get:JvmName`
honoured), interface methods with a body as default methods (the library is built with
-Xjvm-default=all), `@Deprecated` — and gives every body `throw new UnsupportedOperationException()`.
Private, internal and external members are left out. It parses the declaration forms these files use,
no more: a file with another form stops the script rather than passing unnoticed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = "extension/android/executorch_android/src/main/java/"
FILES = ["org/pytorch/executorch/extension/llm/LlmCallback.kt",
         "org/pytorch/executorch/extension/llm/LlmGenerationConfig.kt",
         "org/pytorch/executorch/extension/llm/LlmModuleConfig.kt",
         "org/pytorch/executorch/extension/llm/LlmModule.kt",
         "org/pytorch/executorch/ExecutorchRuntimeException.kt"]
OUT = Path(__file__).resolve().parent / "java"
TYPES = {"Int": "int", "Float": "float", "Boolean": "boolean", "Long": "long", "Double": "double", "Unit": "void",
         "String": "String", "IntArray": "int[]", "FloatArray": "float[]", "ByteArray": "byte[]",
         "ByteBuffer": "java.nio.ByteBuffer", "Throwable": "Throwable", "RuntimeException": "RuntimeException"}


def java_type(kt: str) -> str:
    kt = kt.strip().rstrip("?")
    m = re.fullmatch(r"List<(.+)>", kt)
    if m:
        return f"java.util.List<{java_type(m.group(1))}>"
    if kt in TYPES:
        return TYPES[kt]
    if re.fullmatch(r"[A-Z]\w*", kt):  # a class of these files
        return kt
    raise SystemExit(f"generate.py: no Java type for Kotlin type {kt!r}")


def strip_comments(text: str) -> str:
    """Comments out, string literals emptied (their brackets would confuse the bracket matching)."""
    text = re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def matching(text: str, start: int) -> int:
    """Index just past the bracket that closes the one at `start`."""
    pairs = {"(": ")", "{": "}", "<": ">"}
    open_, close, depth = text[start], pairs[text[start]], 0
    for i in range(start, len(text)):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise SystemExit("generate.py: unbalanced brackets")


def declaration_end(text: str, start: int) -> int:
    """Index past a class header that starts at `start`: its name, annotations, constructor parameters and
    supertype calls, up to (not into) a body brace or the end of its line."""
    k = start
    while k < len(text):
        ch = text[k]
        if ch == "(":
            k = matching(text, k)
        elif ch in "{\n":
            if ch == "\n" and (text[k:].lstrip().startswith((":", "(")) or text[:k].rstrip().endswith((":", ","))):
                k += 1  # the header goes on over the line break
                continue
            return k
        else:
            k += 1
    return k


def split_params(params: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "(<" and 1 or ch in ")>" and -1 or 0
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in out + [cur] if p.strip()]


@dataclass
class Param:
    name: str
    type: str
    getter: str | None = None  # a primary-constructor `val`: its Java getter's name

    @classmethod
    def parse(cls, text: str) -> "Param":
        m = re.fullmatch(r"((?:@\S+\s+)*)(val\s+|var\s+)?(\w+)\s*:\s*([^=]+?)(\s*=.*)?", text.strip(), flags=re.S)
        if not m:
            raise SystemExit(f"generate.py: unreadable parameter {text!r}")
        getter = None
        if m.group(2):
            jvm = re.search(r'@get:JvmName\("(\w+)"\)', m.group(1) or "")
            getter = jvm.group(1) if jvm else "get" + m.group(3)[0].upper() + m.group(3)[1:]
        return cls(m.group(3), m.group(4).strip(), getter)

    def java(self) -> str:
        return f"{java_type(self.type)} {self.name}"


@dataclass
class JavaClass:
    name: str
    kind: str  # "class" or "interface"
    modifiers: str = "public final"
    extends: str | None = None
    implements: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    nested: list["JavaClass"] = field(default_factory=list)

    def render(self, indent: str = "") -> list[str]:
        head = f"{indent}{self.modifiers} {self.kind} {self.name}"
        if self.extends:
            head += f" extends {self.extends}"
        if self.implements:
            head += " implements " + ", ".join(self.implements)
        lines = [head + " {"]
        lines += [f"{indent}  {m}" for m in self.members]
        for n in self.nested:
            lines += [""] + n.render(indent + "  ")
        return lines + [f"{indent}}}"]


STUB = "{ throw new UnsupportedOperationException(\"stub\"); }"


def parse_class(text: str, name: str, header: str, body: str, outer: str | None = None) -> JavaClass:
    """One Kotlin class or interface (`header`: everything before its body's brace)."""
    kind = "interface" if re.search(r"\binterface\b", header) else "class"
    mods = "public" if kind == "interface" or "open " in header else "public final"
    if outer is not None:
        mods = mods.replace("public", "public static")
    cls = JavaClass(name, kind, mods)
    primary = re.search(rf"\bclass\s+{name}\s*(private|internal)?\s*(?:@\w+\s*)*(?:constructor)?\s*\(", header)
    if primary:
        start = header.index("(", primary.start())
        params = [Param.parse(p) for p in split_params(header[start + 1:matching(header, start) - 1])]
        for p in params:
            if p.getter:
                cls.members.append(f"public {java_type(p.type)} {p.getter}() {STUB}")
        visibility = primary.group(1)
        if visibility is None:
            cls.members.append(f"public {name}({', '.join(p.java() for p in params)}) {STUB}")
        else:
            cls.members.append(f"private {name}({', '.join(p.java() for p in params)}) {STUB}")
        rest = header[matching(header, start):]
    else:
        rest = header.split(name, 1)[1]
        if kind == "class":
            cls.members.append(f"private {name}() {STUB}")
    sup = re.search(r":\s*([\w.]+)\s*(\(|$|,|\{)", rest)
    if sup:
        base = sup.group(1)
        if base == "Closeable":
            cls.implements.append("java.io.Closeable")
        else:
            cls.extends = base
    parse_body(body, cls, kind)
    if kind == "class" and not any(re.search(rf"\b{name}\(\)", m) for m in cls.members):
        # A subclass stub's constructors call super() implicitly: give them a no-argument one that only
        # the class and its nest see.
        cls.members.insert(0, f"private {name}() {STUB}")
    return cls


def parse_body(body: str, cls: JavaClass, kind: str) -> None:
    """The members at this body's top level."""
    i = 0
    while i < len(body):
        m = re.compile(r"((?:@[\w:.]+(?:\((?:[^()]|\([^()]*\))*\))?\s+)*)((?:(?:private|internal|override|external|open|const|"
                       r"inline|operator)\s+)*)(fun|constructor|companion object|class|object|val|var|init)\b",
                       re.S).search(body, i)
        if m is None:
            return
        annotations, modifiers, what = m.group(1), m.group(2).split(), m.group(3)
        hidden = "private" in modifiers or "internal" in modifiers
        j = m.end()
        if what in ("class", "object"):
            name = re.match(r"\s*(\w+)", body[j:]).group(1)
            end = declaration_end(body, j)  # past the header: constructor and supertype calls
            if body[end:].lstrip().startswith("{"):
                brace = body.index("{", end)
                header, inner, i = body[m.start():brace], body[brace + 1:matching(body, brace) - 1], matching(body, brace)
            else:  # no body
                header, inner, i = body[m.start():end], "", end
            if not hidden:
                cls.nested.append(parse_class(header, name, header, inner, outer=cls.name))
        elif what == "companion object":
            brace = body.index("{", j)
            companion = JavaClass("Companion", "class")
            parse_body(body[brace + 1:matching(body, brace) - 1], companion, "companion")
            cls.members += companion.members
            i = matching(body, brace)
        elif what == "init":
            i = matching(body, body.index("{", j))
        elif what in ("val", "var"):
            decl = re.match(r"\s*(\w+)\s*(?::\s*([\w<>?.]+))?\s*(?:=\s*([^\n]+))?", body[j:])
            if kind == "companion" and "const" in modifiers and not hidden:
                cls.members.append(f"public static final {java_type(decl.group(2) or 'Int')} {decl.group(1)} = "
                                   f"{decl.group(3).strip()};")
            elif not hidden and kind != "companion":
                raise SystemExit(f"generate.py: a public property {decl.group(1)!r} in a body; extend the script")
            i = j + decl.end()
        else:  # fun or constructor
            paren = body.index("(", j)
            end = matching(body, paren)
            name = cls.name if what == "constructor" else body[j:paren].strip()
            params = [Param.parse(p) for p in split_params(body[paren + 1:end - 1])]
            tail = re.match(r"\s*(?::\s*([\w<>?.]+))?", body[end:])
            ret = tail.group(1) if what == "fun" else None
            after = end + tail.end()
            rest = body[after:].lstrip()
            if rest.startswith(":"):  # a constructor's delegation: this(...) / super(...)
                k = body.index("(", after)
                after = matching(body, k)
                rest = body[after:].lstrip()
            has_body = rest.startswith("{") or rest.startswith("=")
            if rest.startswith("{"):
                k = body.index("{", after)
                after = matching(body, k)
            elif rest.startswith("="):
                k = after + len(body[after:]) - len(rest) + 1
                line_end = body.find("\n", k)
                depth_end = k
                for br in re.finditer(r"[({]", body[k:line_end if line_end >= 0 else len(body)]):
                    depth_end = matching(body, k + br.start())
                    break
                after = max(depth_end, line_end if line_end >= 0 else len(body))
            i = after
            if hidden or "external" in modifiers:
                continue
            args = ", ".join(p.java() for p in params)
            notes = "@Deprecated " if "@Deprecated" in annotations else ""
            notes += "@Override " if "override" in modifiers else ""
            if what == "constructor":
                cls.members.append(f"public {name}({args}) {STUB}")
            elif kind == "interface":
                prefix = "default " if has_body else ""
                cls.members.append(f"{notes}{prefix}{java_type(ret or 'Unit')} {name}({args})"
                                   + (f" {{}}" if has_body and java_type(ret or "Unit") == "void" else ";"))
            elif kind == "companion":
                if "@JvmStatic" in annotations:
                    cls.members.append(f"{notes}public static {java_type(ret or 'Unit')} {name}({args}) {STUB}")
            else:
                cls.members.append(f"{notes}public {java_type(ret or 'Unit')} {name}({args}) {STUB}")


def stub(path: str, source: str, ref: str, commit: str) -> tuple[Path, str]:
    text = strip_comments(source)
    package = re.search(r"^package\s+([\w.]+)", text, flags=re.M).group(1)
    decl = re.search(r"^(?:@\w+\s+)*((?:open\s+)?(?:class|interface)\s+(\w+))", text, flags=re.M)
    name = decl.group(2)
    brace = text.index("{", decl.end())
    # the header may span lines (a primary constructor); its body starts at the first top-level brace
    depth = 0
    for k in range(decl.start(), len(text)):
        depth += text[k] == "(" and 1 or text[k] == ")" and -1 or 0
        if text[k] == "{" and depth == 0:
            brace = k
            break
    cls = parse_class(text, name, text[decl.start():brace], text[brace + 1:matching(text, brace) - 1])
    lines = [f"// Generated by android_demo/stubs/generate.py from pytorch/executorch {ref} ({commit}),",
             f"// {ROOT}{path}.",
             "// The API as Java sees it, every body a stub: compile against it, never ship it. Do not edit;",
             "// regenerate at the release the app depends on.",
             f"package {package};", ""] + cls.render() + [""]
    return OUT / (path.removesuffix(".kt") + ".java"), "\n".join(lines)


def main(checkout: str, ref: str) -> None:
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", f"{ref}^{{commit}}"], capture_output=True, text=True,
                            check=True).stdout.strip()
    for path in FILES:
        source = subprocess.run(["git", "-C", checkout, "show", f"{commit}:{ROOT}{path}"], capture_output=True,
                                text=True, check=True).stdout
        out, text = stub(path, source, ref, commit)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out.relative_to(OUT.parent.parent)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.strip().splitlines()[2].strip())
    main(sys.argv[1], sys.argv[2])
