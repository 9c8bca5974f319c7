#!/usr/bin/env python3
"""Compile-time checks: check.py SOURCE DEFINE MESSAGE -- COMPILER ARGS...

The source must compile as is, and must fail to compile with -DDEFINE, with
MESSAGE in the compiler's errors (so that a failure for another reason, a
missing header, does not pass)."""
import subprocess
import sys


def compile_(cmd, source, extra):
    return subprocess.run(cmd + ['-fsyntax-only'] + extra + [source], capture_output=True, text=True)


def main():
    sep = sys.argv.index('--')
    source, define, message = sys.argv[1:sep]
    cmd = sys.argv[sep + 1:]
    ok = compile_(cmd, source, [])
    if ok.returncode != 0:
        print(f'{source} without -D{define} should compile:\n{ok.stderr}')
        return 1
    bad = compile_(cmd, source, ['-D' + define])
    if bad.returncode == 0:
        print(f'{source} with -D{define} compiled; it must be rejected')
        return 1
    if message not in bad.stderr:
        print(f'{source} with -D{define} failed, but not with "{message}":\n{bad.stderr}')
        return 1
    print(f'{source}: rejected with -D{define} as it should be')
    return 0


if __name__ == '__main__':
    sys.exit(main())
